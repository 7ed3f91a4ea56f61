"""Mask maths shared by magnitude, Wanda and SparseGPT."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import UsageError
from compressor_methods._masks import (check_n_m, parse_pattern, prune_mask_cumulative, prune_mask_global,
                                       prune_mask_n_m, prune_mask_per_row)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.73, 0.9])
def test_per_row_mask_has_exact_count_in_every_row(sparsity):
    scores = torch.randn(33, 100)
    mask = prune_mask_per_row(scores, sparsity)
    assert (mask.sum(1) == int(100 * sparsity)).all()
    # the pruned entries are the lowest of their row
    kept_min = scores.masked_fill(mask, float("inf")).min(1).values
    pruned_max = scores.masked_fill(~mask, float("-inf")).max(1).values
    assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_n_m_mask_prunes_exactly_n_in_every_group(n, m):
    scores = torch.randn(16, 64)
    mask = prune_mask_n_m(scores, n, m)
    assert (mask.reshape(16, -1, m).sum(-1) == n).all()
    assert check_n_m(scores.masked_fill(mask, 0), n, m)


def test_n_m_rejects_width_not_multiple_of_m():
    with pytest.raises(UsageError, match="cannot hold a 2:4"):
        prune_mask_n_m(torch.randn(4, 10), 2, 4)


def test_global_mask_prunes_lowest_fraction_of_whole_tensor():
    scores = torch.arange(40.0).reshape(4, 10)
    mask = prune_mask_global(scores, 0.25)
    assert mask.sum() == 10 and mask.flatten()[:10].all()


def test_cumulative_variant_reaches_target_sparsity():
    scores = torch.rand(64, 256)
    mask = prune_mask_cumulative(scores, 0.5)
    assert abs(mask.float().mean().item() - 0.5) <= 1e-3
    assert mask.sum(1).float().std() > 0  # rows may differ, unlike the plain per-row mask


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "x"])
def test_parse_pattern_rejects_bad_patterns(bad):
    with pytest.raises(UsageError):
        parse_pattern(bad)


def test_parse_pattern():
    assert parse_pattern(" 2:4 ") == (2, 4)
