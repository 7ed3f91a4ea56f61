"""Windowing, sources, hashing and the Shakespeare split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compressor.data import (SHAKESPEARE_EVAL_PLAYS, load_windows, make_windows, shakespeare_files,
                             windows_sha256)
from compressor.errors import DataError
from compressor.testing import tiny_tokenizer


def test_windows_are_deterministic_under_a_seed_and_non_overlapping():
    ids = list(range(1000))
    a = make_windows(ids, 5, 100, shuffle_seed=3)
    b = make_windows(ids, 5, 100, shuffle_seed=3)
    c = make_windows(ids, 5, 100, shuffle_seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert all(w[0] % 100 == 0 and np.array_equal(w, np.arange(w[0], w[0] + 100)) for w in a)
    assert len({int(w[0]) for w in a}) == 5
    assert np.array_equal(make_windows(ids, 3, 100, None)[:, 0], [0, 100, 200])


def test_too_little_data_is_a_clear_error():
    with pytest.raises(DataError, match="enough for 10 windows"):
        make_windows(list(range(1000)), 11, 100, None)


def test_calibration_and_evaluation_plays_never_overlap():
    calib = {f.name for f in shakespeare_files("calibration")}
    evaluation = {f.name for f in shakespeare_files("evaluation")}
    assert evaluation == set(SHAKESPEARE_EVAL_PLAYS)
    assert not calib & evaluation and len(calib) == 41


def test_text_jsonl_folder_and_npy_sources(tmp_path):
    tok = tiny_tokenizer()
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": "some text " * 20}) for _ in range(5)))
    w_txt = load_windows(str(tmp_path / "a.txt"), "calibration", tok, 4, 16, seed=0)
    w_jsonl = load_windows(str(tmp_path / "b.jsonl"), "evaluation", tok, 4, 16, seed=0)
    w_dir = load_windows(str(tmp_path), "evaluation", tok, 4, 16, seed=0)
    assert w_txt.shape == w_jsonl.shape == w_dir.shape == (4, 16)
    arr = np.arange(60).reshape(3, 20)
    np.save(tmp_path / "x.npy", arr)
    assert np.array_equal(load_windows(str(tmp_path / "x.npy"), "calibration", tok, None, None, 0), arr)
    assert load_windows(str(tmp_path / "x.npy"), "calibration", tok, 2, None, 0).shape == (2, 20)
    with pytest.raises(DataError, match="seq_len"):
        load_windows(str(tmp_path / "x.npy"), "calibration", tok, None, 10, 0)
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(DataError, match="no string field 'text'"):
        load_windows(str(tmp_path / "bad.jsonl"), "calibration", tok, 1, 4, 0)
    with pytest.raises(DataError, match="does not exist"):
        load_windows(str(tmp_path / "missing.txt"), "calibration", tok, 1, 4, 0)


def test_hash_depends_on_ids_and_shape():
    a = np.arange(12).reshape(3, 4)
    assert windows_sha256(a) == windows_sha256(a.copy())
    assert windows_sha256(a) != windows_sha256(a.reshape(4, 3))
    b = a.copy()
    b[0, 0] = 99
    assert windows_sha256(a) != windows_sha256(b)


@pytest.mark.slow
def test_builtin_corpus_reproduces_the_shared_windows(smollm2_original):
    """The documented windowing is exactly how ../shared/data/smollm2-shakespeare was made."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "calib.npy").is_file():  # the claim is about those files: without them there is nothing to compare
        pytest.skip(f"{SHARED_DATA} is absent; the other tests build the same windows from the corpus")
    tok = smollm2_original.tokenizer
    calib = load_windows("shakespeare", "calibration", tok, 32, 512, seed=0)
    evaluation = load_windows("shakespeare", "evaluation", tok, 32, 512, seed=0)
    assert np.array_equal(calib, np.load(SHARED_DATA / "calib.npy"))
    assert np.array_equal(evaluation, np.load(SHARED_DATA / "eval.npy"))
