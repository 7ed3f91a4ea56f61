"""The distillation losses: KL divergence on the logits, normalised MSE on hidden states at matching boundaries."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) at ``temperature``, times its square (Hinton et al., 2015).

    The square keeps the gradient's size independent of the temperature.
    """
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def boundary_pairs(layer_origin: list[int], teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) indices into ``hidden_states`` where both models have run the same original layers' places.

    Entry k of ``hidden_states`` is the input of layer k; the output of student layer i stands where
    the teacher's output of layer ``layer_origin[i]`` stands. The last layer is left out: its output
    is the final norm's, which the logit loss already covers.
    """
    return [(i + 1, o + 1) for i, o in enumerate(layer_origin[:-1]) if o + 1 < teacher_layers]


def hidden_mse(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
               pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Mean over ``pairs`` of ||s - t||² / ||t||²: a scale-free MSE, since hidden states grow with depth."""
    losses = [(student_hidden[s].float() - teacher_hidden[t].float()).pow(2).mean()
              / teacher_hidden[t].float().pow(2).mean().clamp_min(1e-12) for s, t in pairs]
    return torch.stack(losses).mean() if losses else torch.zeros(())


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood of each next token and the number of tokens scored."""
    vocab = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="sum")
    return float(nll), ids[:, 1:].numel()
