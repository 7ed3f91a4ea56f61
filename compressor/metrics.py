"""Quality and latency metrics computed from two runtimes' measurements on the same windows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compressor.api import LatencySamples, TokenScores


def perplexity_from_scores(scores: TokenScores) -> float:
    """exp(mean next-token NLL) over every scored position."""
    return float(np.exp(-scores.target_logprobs.astype(np.float64).mean()))


def top1_agreement(reference: TokenScores, candidate: TokenScores) -> float:
    """Fraction of positions where both runtimes' most likely next token is the same."""
    return float((reference.topk_ids[..., 0] == candidate.topk_ids[..., 0]).mean())


def topk_kl(reference: TokenScores, candidate: TokenScores) -> float:
    """Mean KL(reference || candidate) in nats, estimated from both runtimes' top-k (see :func:`topk_kl_per_token`)."""
    return float(topk_kl_per_token(reference, candidate).mean())


def topk_kl_per_token(reference: TokenScores, candidate: TokenScores) -> np.ndarray:
    """KL(reference || candidate) in nats at every scored position [N, L-1], estimated from the top-k.

    Bins are the reference's top-k tokens plus one bin for the rest of the vocabulary.
    A reference token missing from the candidate's top-k gets an equal share of the
    candidate's remaining mass, capped at the candidate's k-th probability. With k equal
    to the vocabulary size the estimate is exact.
    """
    ref_ids, ref_lp = reference.topk_ids, reference.topk_logprobs.astype(np.float64)
    cand_ids, cand_lp = candidate.topk_ids, candidate.topk_logprobs.astype(np.float64)
    p = np.exp(ref_lp)  # [..., k]
    cand_p = np.exp(cand_lp)
    match = ref_ids[..., :, None] == cand_ids[..., None, :]  # [..., k_ref, k_cand]
    found = match.any(-1)
    q_found = (match * cand_p[..., None, :]).sum(-1)
    cand_rest = np.clip(1.0 - cand_p.sum(-1), 1e-12, None)
    missing = (~found).sum(-1, keepdims=True)
    share = np.minimum(cand_rest[..., None] / np.maximum(missing, 1), cand_p[..., -1:])
    q = np.where(found, q_found, share)
    q = np.clip(q, 1e-12, None)
    p_rest = np.clip(1.0 - p.sum(-1), 0.0, None)
    q_rest = np.clip(1.0 - q.sum(-1), 1e-12, None)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(q))).sum(-1)
    kl += np.where(p_rest > 0, p_rest * (np.log(np.clip(p_rest, 1e-12, None)) - np.log(q_rest)), 0.0)
    return np.clip(kl, 0.0, None)


def per_position(reference: TokenScores, candidate: TokenScores) -> dict[str, list[float]]:
    """KL and NLL change (candidate minus reference, nats) at each position, averaged over the windows."""
    kl = topk_kl_per_token(reference, candidate).mean(axis=0)
    nll = (reference.target_logprobs.astype(np.float64) - candidate.target_logprobs.astype(np.float64)).mean(axis=0)
    return {"kl": [round(float(x), 6) for x in kl], "nll_delta": [round(float(x), 6) for x in nll]}


def greedy_match(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean fraction of tokens generated before the first divergence, and the exact-match rate."""
    prefix, exact = [], []
    for ref, cand in zip(reference, candidate, strict=True):
        n = 0
        for a, b in zip(ref, cand):
            if a != b:
                break
            n += 1
        prefix.append(n / max(len(ref), 1))
        exact.append(float(list(ref) == list(cand)))
    return {"prefix_match": float(np.mean(prefix)), "exact_match": float(np.mean(exact))}


def summarize_latency(samples: LatencySamples) -> dict[str, float]:
    """Median and p90 of prefill seconds and decode tokens/s, plus prefill throughput."""
    prefill = np.asarray(samples.prefill_s)
    decode = np.asarray(samples.decode_tok_s)
    return {
        "prompt_tokens": samples.prompt_tokens, "new_tokens": samples.new_tokens, "repeats": len(prefill),
        "prefill_s_median": float(np.median(prefill)), "prefill_s_p90": float(np.percentile(prefill, 90)),
        "prefill_tok_s_median": float(samples.prompt_tokens / np.median(prefill)),
        # p90 of a rate means its slow tail: the 10th percentile of tokens/s
        "decode_tok_s_median": float(np.median(decode)), "decode_tok_s_p90": float(np.percentile(decode, 10)),
    }
