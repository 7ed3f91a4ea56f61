"""Tokenizer metadata for GGUF: copied from the source GGUF, built from an HF tokenizer, or none.

llama.cpp tokenizes with what these keys say, so they must reproduce the model's own tokenizer:
the same tokens in the same id order, the same merges, the same pre-tokenizer regexes and the
same special tokens (which decide whether `<|im_start|>` in text becomes one control token).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from compressor.api import ExportError

TOKENIZER_PREFIX = "tokenizer."
PAD_TOKEN = "[PAD{}]"


def copy_tokenizer_from_gguf(writer: Any, source_gguf: Path, n_vocab: int) -> dict[str, Any]:
    """Copy every ``tokenizer.*`` key of the original GGUF file (the exact vocabulary llama.cpp knew)."""
    import gguf

    reader = gguf.GGUFReader(str(source_gguf))
    copied = []
    n_tokens = None
    for key, field in reader.fields.items():
        if not key.startswith(TOKENIZER_PREFIX):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:  # raw bytes: tokens need not be valid UTF-8
                value: Any = [bytes(field.parts[i]) for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(key, value, vtype, sub_type=sub)
            if key == gguf.Keys.Tokenizer.LIST:
                n_tokens = len(value)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[field.data[0]]), vtype)
        else:
            writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)
        copied.append(key)
    if n_tokens is None:
        raise ExportError(f"the source model file {source_gguf} has no tokenizer.ggml.tokens",
                          hint="export from a model whose GGUF carries its tokenizer")
    if n_tokens != n_vocab:
        raise ExportError(f"the source GGUF has {n_tokens} tokens but the model's embedding has {n_vocab} rows",
                          hint="do not resize the vocabulary, or load the model from an HF directory")
    return {"tokenizer": "copied from source GGUF", "tokenizer_keys": len(copied),
            "tokenizer_model": _string_field(reader, gguf.Keys.Tokenizer.MODEL),
            "tokenizer_pre": _string_field(reader, gguf.Keys.Tokenizer.PRE)}


def _string_field(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def merges_missing_error() -> ExportError:
    """A byte-level BPE without merges has no GGUF form that both llama.cpp and transformers load."""
    # llama.cpp refuses a `gpt2` vocabulary without merges, and transformers refuses any merge whose
    # joined token is not in the vocabulary, so no placeholder satisfies both.
    return ExportError("the model's tokenizer is a byte-level BPE with no merges, which cannot be written to "
                       "GGUF loadably (llama.cpp needs merges, transformers refuses placeholder ones)",
                       hint="export with -E tokenizer=none (token ids only), or use a tokenizer with merges")


def bpe_without_merges(tokenizer: Any) -> bool:
    """True for a fast byte-level BPE tokenizer whose merge list is empty."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    model = json.loads(backend.to_str()).get("model", {})
    return model.get("type") == "BPE" and not model.get("byte_fallback", False) and not model.get("merges")


def add_dummy_tokenizer(writer: Any, n_vocab: int) -> dict[str, Any]:
    """Declare no tokenizer (`tokenizer.ggml.model = "none"`): llama.cpp then scores token ids only."""
    writer.add_tokenizer_model("none")  # the writer already set {arch}.vocab_size = n_vocab
    return {"tokenizer": "none", "tokenizer_model": "none"}


def add_hf_tokenizer(writer: Any, tokenizer: Any, n_vocab: int, add_bos: bool | None = None) -> dict[str, Any]:
    """Write an HF fast tokenizer (BPE byte-level as `gpt2`, byte-fallback BPE as `llama`) into GGUF."""
    with tempfile.TemporaryDirectory(prefix="compressor-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        return add_tokenizer_dir(writer, Path(tmp), n_vocab, add_bos)


def add_tokenizer_dir(writer: Any, folder: Path, n_vocab: int, add_bos: bool | None = None) -> dict[str, Any]:
    """Write the tokenizer saved in ``folder`` (tokenizer.json and its configs) into GGUF."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"the model's tokenizer has no tokenizer.json in {folder} (a slow tokenizer?)",
                          hint="load the model with a fast tokenizer, or export with tokenizer=none")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback", False):
        tokens, types = _bpe_tokens(spec)
        scores = None
        ggml_model, pre = "gpt2", pre_tokenizer_name(spec)
    elif model.get("type") == "BPE":  # SentencePiece-style BPE with byte fallback (Llama 2, Mistral)
        tokens, types, scores = _spm_bpe_tokens(spec)
        ggml_model, pre = "llama", "default"
    else:
        raise ExportError(f"tokenizer model type {model.get('type')!r} is not supported by the GGUF writer",
                          hint="use a BPE tokenizer, or export with tokenizer=none")
    if len(tokens) > n_vocab:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the embedding has only {n_vocab} rows",
                          hint="the model's vocabulary was cut; export with tokenizer=none")
    padded = n_vocab - len(tokens)
    for i in range(padded):  # llama.cpp needs one token per embedding row, as the official converter pads
        tokens.append(PAD_TOKEN.format(i).encode())
        types.append(int(gguf.TokenType.USER_DEFINED))
        if scores is not None:
            scores.append(-1000.0)
    writer.add_tokenizer_model(ggml_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_prepends_space(spec))
    if ggml_model == "gpt2" and not model.get("merges"):
        raise merges_missing_error()
    special = gguf.SpecialVocab(folder, load_merges=ggml_model == "gpt2", n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    if add_bos is not None and "bos" not in special.add_special_token:
        writer.add_add_bos_token(add_bos)
    return {"tokenizer": "from tokenizer.json", "tokenizer_model": ggml_model, "tokenizer_pre": pre,
            "padded_tokens": padded, "special_tokens": dict(special.special_token_ids)}


def _bpe_tokens(spec: dict[str, Any]) -> tuple[list[bytes], list[int]]:
    """Tokens in id order with their types: added special tokens are CONTROL, other added USER_DEFINED."""
    import gguf

    by_id: dict[int, str] = {i: t for t, i in spec["model"]["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    size = max(by_id) + 1
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise ExportError(f"the tokenizer's ids are not contiguous: {len(missing)} ids missing (first {missing[0]})",
                          hint="export with tokenizer=none")
    tokens = [by_id[i].encode("utf-8") for i in range(size)]
    types = [kinds.get(i, int(gguf.TokenType.NORMAL)) for i in range(size)]
    return tokens, types


def _spm_bpe_tokens(spec: dict[str, Any]) -> tuple[list[bytes], list[int], list[float]]:
    """Tokens, types and scores of a byte-fallback BPE for llama.cpp's SentencePiece tokenizer.

    llama.cpp's `llama` tokenizer merges the adjacent pair whose joined text has the highest score,
    so a token made by merge number r scores -r: merges then fire in the tokenizer's own order.
    """
    import gguf

    tokens, types = _bpe_tokens(spec)
    rank: dict[str, int] = {}
    for r, merge in enumerate(spec["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    scores = []
    for i, tok in enumerate(tokens):
        text = tok.decode("utf-8")
        if types[i] == int(gguf.TokenType.NORMAL) and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = int(gguf.TokenType.BYTE)
        if types[i] == int(gguf.TokenType.NORMAL) and text == spec["model"].get("unk_token"):
            types[i] = int(gguf.TokenType.UNKNOWN)
        scores.append(-float(rank[text]) if text in rank else 0.0)
    return tokens, types, scores


def _prepends_space(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (a normalizer Prepend or a Metaspace prefix)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text


# Pre-tokenizer regexes of tokenizer.json mapped to llama.cpp's `tokenizer.ggml.pre` names.
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """Name llama.cpp's pre-tokenizer that splits text as ``spec``'s pre_tokenizer does."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # the plain GPT-2 regex
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2 regex after splitting every digit (SmolLM, SmolLM2)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex == LLAMA3_REGEX:
            return "llama-bpe"
        if regex == QWEN2_REGEX:
            return "qwen2"
    raise ExportError(f"llama.cpp has no pre-tokenizer known to match this tokenizer ({kinds})",
                      hint="this tokenizer would split text differently in llama.cpp; export with "
                           "tokenizer=none, or add its pre-tokenizer name to compressor_exporters.gguf")
