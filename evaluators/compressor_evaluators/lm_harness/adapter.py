"""An lm-evaluation-harness ``LM`` whose requests go to a compressor Runtime (vLLM, ONNX Runtime, llama.cpp, ...).

lm-eval turns a task into three kinds of request; each becomes calls the gate already makes:

- ``loglikelihood(context, continuation)``: the token sequence context + continuation is scored with
  ``Runtime.score``; the continuation's log-probability is the sum over its positions, and it is
  greedy when each of its tokens is the runtime's top-1 there.
- ``loglikelihood_rolling(text)``: the text is cut into lm-eval's rolling windows, each scored the same way.
- ``generate_until(context, until)``: ``Runtime.generate`` continues greedily for ``max_gen_toks``
  tokens; the text is cut at the end-of-text token and at the first stop string.

Sequences are batched by length and right-padded: a causal model's predictions at a position never
see the tokens after it, so the padding changes nothing that is read. (A runtime whose activation
quantization is dynamic over the whole batch, like ONNX Runtime's int8, is the exception: its
figures depend on the batch, as lm-eval's own backends' do.) Tokenization follows lm-eval's
Hugging Face backend (no special tokens added, left truncation), so both give the same requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from compressor.api import Runtime, UsageError, steps

Request = tuple[list[int], list[int]]  # context tokens, continuation tokens


class RuntimeLM(TemplateLM):
    """lm-eval's model interface over one compressor Runtime and the original model's tokenizer."""

    def __init__(self, runtime: Runtime, tokenizer: Any, max_length: int, batch_size: int = 32,
                 log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.runtime, self.tokenizer, self.log = runtime, tokenizer, log
        self.max_length = int(max_length)  # tokens the model sees per request (the runtime takes one more)
        self.batch_size = int(batch_size)
        self._sampling_noted = False

    @property
    def eot_token_id(self) -> int:
        """The end-of-text token: lm-eval's stand-in context for an empty one, and the padding here."""
        eos = self.tokenizer.eos_token_id
        return int(eos if eos is not None else 0)

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is replaced by: BOS when the tokenizer has one, as lm-eval's HF backend."""
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``, without special tokens unless asked (lm-eval's HF backend does the same)."""
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``."""
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def _score(self, requests: list[Request], description: str) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities, and whether greedy decoding would produce it."""
        window = self.max_length + 1
        sequences = []
        for context, continuation in requests:
            if not continuation:
                raise UsageError("lm-eval asked for the likelihood of an empty continuation")
            if len(continuation) >= window:
                raise UsageError(f"a continuation of {len(continuation)} tokens does not fit max_length "
                                 f"{self.max_length}", hint="raise the lm_eval evaluator's max_length option")
            sequences.append((list(context) + list(continuation))[-window:])
        order = sorted(range(len(requests)), key=lambda i: -len(sequences[i]))  # similar lengths batch together
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in steps(batches, description):
            width = len(sequences[batch[0]])
            ids = np.full((len(batch), width), self.eot_token_id, dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i])] = sequences[i]
            scores = self.runtime.score(ids, 1)
            for row, i in enumerate(batch):
                n, c = len(sequences[i]), len(requests[i][1])
                positions = slice(n - c - 1, n - 1)  # position t predicts token t + 1
                target = ids[row, n - c:n]
                logprob = float(np.asarray(scores.target_logprobs[row, positions], dtype=np.float64).sum())
                greedy = bool((np.asarray(scores.topk_ids[row, positions, 0]) == target).all())
                results[i] = (logprob, greedy)
        return results

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's tokenization of (context, continuation) pairs, without its tqdm bar (the host shows progress)."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """Score (key, context tokens, continuation tokens) requests."""
        return self._score([(ctx, cont) for _, ctx, cont in requests], "lm_eval: loglikelihood")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, over lm-eval's rolling windows of ``max_length`` tokens."""
        pieces: list[Request] = []
        owner: list[int] = []
        for n, request in enumerate(requests):
            (text,) = request.args
            for window in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1):
                context, continuation = make_disjoint_window(window)
                pieces.append((context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._score(pieces, "lm_eval: rolling loglikelihood")):
            totals[n] += logprob
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at end-of-text and at the first of the request's stop strings."""
        jobs = []  # (index, prompt tokens, new tokens, stop strings)
        for n, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            if kwargs.get("do_sample") and not self._sampling_noted:
                self.log("  lm_eval: a task asked for sampling; the runtime decodes greedily (as verify does)")
                self._sampling_noted = True
            new = max(1, min(int(kwargs.get("max_gen_toks", 256)), self.max_length - 1))
            prompt = self.tok_encode(context)[-(self.max_length - new):]
            jobs.append((n, prompt, new, [until] if isinstance(until, str) else list(until)))
        out = [""] * len(requests)
        # one runtime call per batch of requests that ask for the same number of new tokens
        jobs.sort(key=lambda j: (j[2], -len(j[1])))
        batches = [jobs[i:i + self.batch_size] for i in range(0, len(jobs), self.batch_size)]
        batches = [[j for j in b if j[2] == new] for b in batches for new in sorted({j[2] for j in b})]
        for batch in steps(batches, "lm_eval: generate"):
            for (n, _, _, until), tokens in zip(batch, self.runtime.generate([j[1] for j in batch], batch[0][2])):
                tokens = list(tokens)
                if self.eot_token_id in tokens:
                    tokens = tokens[:tokens.index(self.eot_token_id)]
                text = self.tok_decode(tokens)
                for stop in until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                out[n] = text
        return out
