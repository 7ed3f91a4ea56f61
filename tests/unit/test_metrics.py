"""Exact values of the verify metrics on hand-made distributions, each answer worked out in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressor.api import TokenScores
from compressor.metrics import greedy_match, perplexity_from_scores, top1_agreement, topk_kl

TOL = 1e-9


def scores(ids: list[list[int]], probs: list[list[float]], target: list[float] | None = None) -> TokenScores:
    """One window whose positions have the given top-k ids and probabilities (sorted, highest first)."""
    ids_arr = np.array([ids], dtype=np.int64)
    lp = np.log(np.array([probs], dtype=np.float64))
    assert (np.diff(lp, axis=-1) <= 0).all(), "top-k must be given in descending order"
    tgt = np.log(np.array([target if target is not None else [p[0] for p in probs]], dtype=np.float64))
    return TokenScores(target_logprobs=tgt, topk_ids=ids_arr, topk_logprobs=lp)


def kl(p: list[float], q: list[float]) -> float:
    """Σ p log(p/q) over matching bins, by hand."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


# --- topk_kl --------------------------------------------------------------------------------------


def test_kl_with_k_equal_to_the_vocabulary_is_the_exact_kl():
    # vocabulary of 4; the candidate ranks the tokens differently, so the ids must be matched, not zipped
    p = {0: 0.5, 1: 0.25, 2: 0.15, 3: 0.10}
    q = {1: 0.4, 0: 0.3, 3: 0.2, 2: 0.1}
    ref = scores([list(p)], [list(p.values())])
    cand = scores([list(q)], [list(q.values())])
    exact = kl([p[t] for t in range(4)], [q[t] for t in range(4)])
    assert exact == pytest.approx(0.5 * math.log(0.5 / 0.3) + 0.25 * math.log(0.25 / 0.4)
                                  + 0.15 * math.log(0.15 / 0.1) + 0.1 * math.log(0.1 / 0.2), abs=1e-15)
    assert abs(topk_kl(ref, cand) - exact) < TOL
    # KL is not symmetric, and the estimate follows the argument order
    assert abs(topk_kl(cand, ref) - kl([q[t] for t in range(4)], [p[t] for t in range(4)])) < TOL
    assert abs(topk_kl(ref, cand) - topk_kl(cand, ref)) > 1e-3


def test_identical_distributions_give_zero_kl_also_with_a_rest_bin():
    full = scores([[2, 0, 1, 3]], [[0.4, 0.3, 0.2, 0.1]])
    assert abs(topk_kl(full, full)) < TOL
    truncated = scores([[7, 3]], [[0.6, 0.25]])  # vocabulary larger than k: a rest bin of 0.15
    assert abs(topk_kl(truncated, truncated)) < TOL


def test_top_k_smaller_than_the_vocabulary_uses_a_rest_bin():
    # both see the same two tokens, with different masses; the rest bins are 0.2 and 0.15
    ref = scores([[0, 1]], [[0.5, 0.3]])
    cand = scores([[1, 0]], [[0.45, 0.4]])
    want = kl([0.5, 0.3, 0.2], [0.4, 0.45, 0.15])
    assert abs(topk_kl(ref, cand) - want) < TOL


def test_a_reference_token_missing_from_the_candidate_gets_the_candidates_remaining_mass():
    # reference top-2 {0: .5, 1: .3}, rest .2; candidate top-2 {0: .6, 2: .25}, rest .15.
    # Token 1 is missing: share = min(rest / missing, k-th prob) = min(.15 / 1, .25) = .15.
    # Candidate bins: token 0 -> .6, token 1 -> .15, rest -> 1 - .6 - .15 = .25.
    ref = scores([[0, 1]], [[0.5, 0.3]])
    cand = scores([[0, 2]], [[0.6, 0.25]])
    want = 0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.15) + 0.2 * math.log(0.2 / 0.25)
    assert abs(topk_kl(ref, cand) - want) < TOL


def test_the_share_of_missing_tokens_is_capped_at_the_candidates_kth_probability():
    # reference top-3 {0: .4, 1: .3, 2: .2}, rest .1; candidate top-3 {5: .3, 6: .2, 0: .1}, rest .4.
    # Tokens 1 and 2 are missing: min(.4 / 2, .1) = .1 each (a token outside the top-k cannot beat the k-th).
    # Candidate bins: 0 -> .1, 1 -> .1, 2 -> .1, rest -> .7.
    ref = scores([[0, 1, 2]], [[0.4, 0.3, 0.2]])
    cand = scores([[5, 6, 0]], [[0.3, 0.2, 0.1]])
    want = kl([0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7])
    assert abs(topk_kl(ref, cand) - want) < TOL
    # uncapped, the share splits the rest evenly: candidate rest .3 over two missing tokens = .15 each,
    # which is below its k-th probability .2
    cand2 = scores([[5, 0, 6]], [[0.3, 0.2, 0.2]])
    want2 = kl([0.4, 0.3, 0.2, 0.1], [0.2, 0.15, 0.15, 0.5])
    assert abs(topk_kl(ref, cand2) - want2) < TOL


def test_kl_is_the_mean_over_windows_and_positions():
    # two positions: identical at the first (0 nats), the k = vocabulary case at the second
    ref = scores([[0, 1], [0, 1]], [[0.75, 0.25], [0.75, 0.25]])
    cand = scores([[0, 1], [1, 0]], [[0.75, 0.25], [0.5, 0.5]])
    want = (0.0 + kl([0.75, 0.25], [0.5, 0.5])) / 2
    assert abs(topk_kl(ref, cand) - want) < TOL


# --- top1_agreement, perplexity -------------------------------------------------------------------


def test_top1_agreement_counts_positions_with_the_same_argmax():
    ref = scores([[3, 1], [4, 1], [5, 9], [2, 6]], [[0.6, 0.4]] * 4)
    cand = scores([[3, 2], [1, 4], [5, 0], [2, 7]], [[0.9, 0.1]] * 4)  # position 1 differs; the others agree
    assert abs(top1_agreement(ref, cand) - 0.75) < TOL
    assert top1_agreement(ref, ref) == 1.0
    disagree = scores([[0, 3], [0, 4], [0, 5], [0, 2]], [[0.6, 0.4]] * 4)
    assert top1_agreement(ref, disagree) == 0.0


def test_perplexity_is_exp_of_the_mean_negative_log_likelihood():
    s = scores([[0], [0]], [[1.0], [1.0]], target=[0.5, 0.25])
    assert abs(perplexity_from_scores(s) - 2 ** 1.5) < TOL  # exp((ln 2 + ln 4) / 2)
    vocab = 50
    uniform = scores([[0]] * 8, [[1 / vocab]] * 8, target=[1 / vocab] * 8)
    assert abs(perplexity_from_scores(uniform) - vocab) < TOL


# --- greedy_match ---------------------------------------------------------------------------------


def test_greedy_match_full_agreement():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert greedy_match(ref, [list(r) for r in ref]) == {"prefix_match": 1.0, "exact_match": 1.0}


def test_greedy_match_prefix_stops_at_the_first_divergence():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    # first: diverges at position 2 (2/4) and agrees again later, which must not count;
    # second: diverges at position 0 (0/4) though every later token agrees
    got = greedy_match(ref, [[1, 2, 9, 4], [0, 6, 7, 8]])
    assert abs(got["prefix_match"] - (2 / 4 + 0 / 4) / 2) < TOL and got["exact_match"] == 0.0


def test_greedy_match_exact_rate_and_a_last_token_flip():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    got = greedy_match(ref, [[1, 2, 3, 4], [5, 6, 7, 0], [9, 9, 9, 9]])
    assert abs(got["prefix_match"] - (1 + 3 / 4 + 1) / 3) < TOL
    assert abs(got["exact_match"] - 2 / 3) < TOL


def test_greedy_match_a_shorter_candidate_is_not_an_exact_match():
    got = greedy_match([[1, 2, 3, 4]], [[1, 2, 3]])
    assert abs(got["prefix_match"] - 3 / 4) < TOL and got["exact_match"] == 0.0


def test_greedy_match_needs_one_candidate_per_prompt():
    with pytest.raises(ValueError):
        greedy_match([[1, 2], [3, 4]], [[1, 2]])


def test_latency_prompt_is_the_same_cycling_ids_for_every_runtime():
    from compressor.api import latency_prompt

    assert latency_prompt(7, 4) == [1, 2, 3, 1, 2, 3, 1]  # ids 1..vocab-1: never 0 (often padding)
    ids = latency_prompt(100_000, 49152)
    assert len(ids) == 100_000 and min(ids) == 1 and max(ids) == 49151
    assert latency_prompt(3, 1) == [1, 1, 1]  # a degenerate vocabulary still gives a valid prompt
