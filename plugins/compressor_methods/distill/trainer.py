"""The distillation loop: AdamW with warm-up and cosine decay, gradient accumulation, held-out evaluation, the
best checkpoint kept and early stopping."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.api import steps as progress_steps

from .losses import hidden_mse, logit_kl, next_token_nll
from .options import DistillOptions


@dataclass
class Evaluation:
    """The student on the held-out windows after ``step`` optimiser steps."""

    step: int
    kl: float  # mean KL(teacher || student) per token, temperature 1
    perplexity: float  # of the real next tokens

    def to_dict(self) -> dict[str, float]:
        """For the report."""
        return {"step": self.step, "kl": round(self.kl, 6), "perplexity": round(self.perplexity, 4)}


@dataclass
class HealResult:
    """What the loop did: losses per step, held-out evaluations, the step kept, and why it stopped."""

    train_loss: list[float] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    best: Evaluation | None = None  # the evaluation of the step the student was left at
    steps_run: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    seconds: float = 0.0


def _schedule(opts: DistillOptions) -> Callable[[int], float]:
    """Learning-rate factor at each step: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    def factor(step: int) -> float:
        if step < opts.warmup_steps:
            return (step + 1) / opts.warmup_steps
        span = max(1, opts.steps - opts.warmup_steps)
        progress = min(1.0, (step - opts.warmup_steps) / span)
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Window indices, batch by batch, reshuffled each pass over the data."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - batch_size + 1, batch_size):
            yield order[s:s + batch_size]


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; CPU trains in float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def evaluate(student: nn.Module, teacher: Callable[..., Any], ids: torch.Tensor, batch_size: int, step: int) -> Evaluation:
    """Held-out KL to the teacher and the student's perplexity, in eval mode, without gradients."""
    device = ids.device
    was_training = student.training
    student.eval()
    kl_sum, nll_sum, tokens = 0.0, 0.0, 0
    with torch.no_grad(), _autocast(device):
        for s in range(0, ids.shape[0], batch_size):
            batch = ids[s:s + batch_size]
            s_logits = student(input_ids=batch, use_cache=False).logits
            t_logits = teacher(input_ids=batch, use_cache=False).logits
            kl_sum += float(logit_kl(s_logits, t_logits)) * batch.numel()
            nll, n = next_token_nll(s_logits, batch)
            nll_sum, tokens = nll_sum + nll, tokens + n
    student.train(was_training)
    return Evaluation(step, kl_sum / ids.numel(), math.exp(nll_sum / tokens))


def train(student: nn.Module, teacher: Callable[..., Any], params: list[nn.Parameter], train_ids: torch.Tensor,
          holdout_ids: torch.Tensor, opts: DistillOptions, pairs: list[tuple[int, int]], seed: int,
          log: Callable[[str], None] = print) -> HealResult:
    """Distil ``teacher`` into ``student`` by training ``params``; leave the student at its best held-out step."""
    device = train_ids.device
    result = HealResult()
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(opts))
    batches = _batches(train_ids.shape[0], opts.batch_size, seed)
    use_hidden = opts.hidden_weight > 0 and bool(pairs)
    best = evaluate(student, teacher, holdout_ids, opts.batch_size, 0)
    result.evaluations.append(best)
    best_state = [p.detach().clone() for p in params]
    log(f"heal: held-out KL {best.kl:.4f}, perplexity {best.perplexity:.2f} before training")
    misses = 0
    start = time.perf_counter()
    student.train()
    for step in progress_steps(range(1, opts.steps + 1), "heal: distill steps"):
        loss_sum = 0.0
        for _ in range(opts.grad_accum):
            batch = train_ids[next(batches)]
            with _autocast(device):
                with torch.no_grad():
                    t_out = teacher(input_ids=batch, use_cache=False, output_hidden_states=use_hidden)
                s_out = student(input_ids=batch, use_cache=False, output_hidden_states=use_hidden)
                loss = opts.kl_weight * logit_kl(s_out.logits, t_out.logits, opts.temperature)
                if use_hidden:
                    loss = loss + opts.hidden_weight * hidden_mse(s_out.hidden_states, t_out.hidden_states, pairs)
            (loss / opts.grad_accum).backward()
            loss_sum += float(loss.detach()) / opts.grad_accum
            del s_out, t_out, loss
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        result.train_loss.append(loss_sum)
        result.steps_run = step
        result.tokens_seen += opts.grad_accum * opts.batch_size * train_ids.shape[1]
        if step % opts.eval_every and step != opts.steps:
            continue
        ev = evaluate(student, teacher, holdout_ids, opts.batch_size, step)
        result.evaluations.append(ev)
        log(f"heal step {step}/{opts.steps}: train loss {loss_sum:.4f}, held-out KL {ev.kl:.4f}, "
            f"perplexity {ev.perplexity:.2f}")
        if ev.kl < best.kl:
            best, misses = ev, 0
            best_state = [p.detach().clone() for p in params]
        else:
            misses += 1
            if misses >= opts.patience:
                result.stopped_early = step < opts.steps
                log(f"heal: held-out KL has not improved for {misses} evaluations; stopping at step {step}")
                break
    student.eval()
    with torch.no_grad():
        for p, kept in zip(params, best_state):
            p.copy_(kept)
    result.best = best
    result.seconds = time.perf_counter() - start
    return result
