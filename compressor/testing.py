"""Helpers for tests and plugin authors: tiny deterministic Llama models built from a config."""

from __future__ import annotations

from typing import Any

import torch

from compressor.model import ModelHandle, ModelSource


def tiny_llama(layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2, ffn: int = 128,
               vocab: int = 256, seed: int = 0, tie: bool = False, tokenizer: Any = None) -> ModelHandle:
    """Build a small random LlamaForCausalLM (no download) with fixed weights for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                         max_position_embeddings=2048, tie_word_embeddings=tie, rms_norm_eps=1e-5,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger-than-default weights so that layers differ measurably
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.eval()
    return ModelHandle(model, tokenizer, ModelSource("tiny-llama", "(memory)", "memory"))


FAMILIES = ("llama3", "mistral", "qwen2", "qwen3")


def tiny_family(family: str, layers: int = 3, seed: int = 0, tokenizer: Any = None) -> ModelHandle:
    """A small random model of one supported family, with what sets it apart from SmolLM2.

    Llama 3: untied head, ``llama3`` RoPE scaling, GQA 4:1. Mistral: a sliding window. Qwen2:
    biases on q/k/v, untied embeddings. Qwen3: per-head ``q_norm``/``k_norm`` and a head size that
    is not hidden/heads. Norm weights and biases are random and far from 1 and 0, so that a dropped,
    unpermuted or wrongly permuted tensor changes the logits.
    """
    import transformers

    vocab = len(tokenizer) if tokenizer is not None else 256
    # head size 32: the smallest vLLM's CPU attention takes
    common = dict(vocab_size=vocab, hidden_size=128, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    if family == "llama3":
        config = transformers.LlamaConfig(**{**common, "num_key_value_heads": 1}, head_dim=32, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0})
    elif family == "mistral":
        config = transformers.MistralConfig(**common, head_dim=32, sliding_window=1024)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common, use_sliding_window=False)
    elif family == "qwen3":
        config = transformers.Qwen3Config(**common, head_dim=64, attention_bias=False)
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif name.endswith("bias"):
                p.normal_(0, 0.3)
            else:  # norm weights
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.eval()
    return ModelHandle(model, tokenizer, ModelSource(f"tiny-{family}", "(memory)", "memory"))


def random_windows(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Return deterministic random token windows [n, length] as int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)


def tiny_tokenizer() -> Any:
    """A byte-level BPE (<pad>, <s>, </s>, 256 byte tokens, 3 merges) built offline for tiny test models.

    The merges are few but real: a GGUF tokenizer needs at least one that transformers and
    llama.cpp both accept, and they make the runtimes' tokenizers prove they apply merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    merges = [("h", "e"), ("\u0120", "t"), ("\u0120t", "he")]  # "he", " t", " the" (\u0120 is the space byte)
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_tokens) + [a + b for a, b in merges])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def save_tiny_model(path: Any, layers: int = 4, seed: int = 0, **sizes: int) -> ModelHandle:
    """Write a tiny random Llama with a byte-level tokenizer as a stock HF safetensors directory."""
    tokenizer = tiny_tokenizer()
    handle = tiny_llama(layers=layers, vocab=len(tokenizer), seed=seed, tokenizer=tokenizer, **sizes)
    handle.save_hf(path)
    return handle


def write_synthetic_llama(dest: Any, shard_bytes: int = 2 * 10**9, seed: int = 0, **config: Any) -> int:
    """Write a random bf16 Llama of any size as sharded safetensors with an index, never holding it whole.

    Each tensor is generated and written one block of rows at a time, so a model bigger than RAM
    can be made. The byte-level test tokenizer goes with it. Returns the bytes of weights written.
    """
    import zlib
    from pathlib import Path

    import transformers

    from compressor.safetensors_stream import PendingTensor, write_sharded

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = transformers.LlamaConfig(**{"dtype": "bfloat16", **config})
    cfg.save_pretrained(dest)
    tiny_tokenizer().save_pretrained(dest)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in transformers.LlamaForCausalLM(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)

    def rows(name: str, shape: tuple[int, ...]) -> Any:
        def read(start: int, stop: int) -> torch.Tensor:
            if len(shape) == 1:  # norm weights: near 1
                return 1 + 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))[start:stop]
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}/{start}".encode()))
            return torch.randn((stop - start, *shape[1:]), generator=g, dtype=torch.bfloat16) * 0.02
        return read

    pending = [PendingTensor(n, s, torch.bfloat16, rows(n, s)) for n, s in sorted(shapes.items())]
    write_sharded(dest, pending, shard_bytes)
    return sum(t.nbytes for t in pending)


def peak_rss(cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.05,
             log: Any = None) -> tuple[int, int]:
    """Run ``cmd`` and return (exit code, peak RSS in bytes of it and its children, sampled with psutil).

    Its output goes to the open file ``log`` (default: discarded).
    """
    import subprocess
    import time

    import psutil

    sink = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(interval)
    return proc.wait(), peak
