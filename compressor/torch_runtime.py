"""A Runtime over an in-memory PyTorch model: the reference for exporters' checks and unit tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from compressor.api import LatencySamples, Runtime, TokenScores, latency_prompt, steps


def scores_from_logits(logits: torch.Tensor, windows: torch.Tensor, top_k: int) -> TokenScores:
    """Turn [N, L, V] logits for [N, L] windows into :class:`TokenScores` (shared by runtimes)."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = logprobs.gather(-1, windows[:, 1:].unsqueeze(-1).to(logprobs.device)).squeeze(-1)
    top = logprobs.topk(top_k, dim=-1)
    return TokenScores(target.cpu().numpy(), top.indices.cpu().numpy(), top.values.cpu().numpy())


def concat_scores(parts: list[TokenScores]) -> TokenScores:
    """Concatenate per-batch scores along the window axis."""
    return TokenScores(np.concatenate([p.target_logprobs for p in parts]),
                       np.concatenate([p.topk_ids for p in parts]),
                       np.concatenate([p.topk_logprobs for p in parts]))


class TorchRuntime(Runtime):
    """Scores, generates and times an HF causal LM in PyTorch."""

    name = "pytorch"

    def __init__(self, model: Any, batch_size: int = 4) -> None:
        self.model = model
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Score every next-token prediction of ``windows``."""
        parts = []
        for start in steps(range(0, len(windows), self.batch_size), "PyTorch: scoring window batches"):
            batch = torch.from_numpy(np.asarray(windows[start:start + self.batch_size])).to(self.device)
            logits = self.model(batch, use_cache=False).logits
            parts.append(scores_from_logits(logits, batch, top_k))
        return concat_scores(parts)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt, exactly ``max_new_tokens`` plain-argmax tokens (EOS not masked)."""
        out = []
        for prompt in steps(prompts, "PyTorch: generating"):
            ids = torch.tensor([list(prompt)], device=self.device)
            result = self.model(ids, use_cache=True)
            tokens: list[int] = []
            for _ in range(max_new_tokens):
                nxt = result.logits[:, -1:].argmax(-1)
                tokens.append(int(nxt))
                if len(tokens) < max_new_tokens:
                    result = self.model(nxt, past_key_values=result.past_key_values, use_cache=True)
            out.append(tokens)
        return out

    @torch.no_grad()
    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time a prefill and a cached greedy decode of one sequence."""
        ids = torch.tensor([latency_prompt(prompt_tokens, int(self.model.config.vocab_size))], device=self.device)
        prefill, decode = [], []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            out = self.model(ids, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            t1 = time.perf_counter()
            cache = out.past_key_values
            for _ in range(new_tokens - 1):
                out = self.model(nxt, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            if i >= warmup:
                prefill.append(t1 - t0)
                decode.append((new_tokens - 1) / (t2 - t1))
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def describe(self) -> dict[str, Any]:
        """Runtime facts for the report."""
        return {"runtime": self.name, "torch": torch.__version__, "device": str(self.device)}


def perplexity(model: Any, windows: np.ndarray, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) of a PyTorch causal LM over all windows' predicted positions."""
    scores = TorchRuntime(model, batch_size).score(windows, top_k=1)
    return float(np.exp(-scores.target_logprobs.astype(np.float64).mean()))
