"""``distill``: heal a pruned model by distilling the original into it (Minitron-style logit KL, optional hidden-state
MSE at matching layer boundaries), training all weights, the MLPs, the norms or LoRA adapters."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import torch

from compressor.api import (Method, ModelHandle, ResourceError, StageContext, UsageError, available_bytes,
                            loss_curve)

from .losses import boundary_pairs
from .memory import HealMemory, estimate
from .options import DistillOptions
from .teacher import open_teacher
from .trainable import attach_lora, frozen_digest, merge_lora, select_parameters
from .trainer import HealResult, evaluate, train

# the largest logit difference the merged LoRA model may show against the adapters it folded in (float32)
MERGE_TOLERANCE = 1e-3


def _windows(ids: np.ndarray, seq_len: int | None) -> torch.Tensor:
    """data.heal's windows, cut into pieces of ``seq_len`` tokens when it is shorter than theirs."""
    t = torch.as_tensor(ids, dtype=torch.long)
    if seq_len is None or seq_len >= t.shape[1]:
        return t
    usable = t.shape[1] // seq_len * seq_len
    return t[:, :usable].reshape(-1, seq_len)


def _config_int(config: Any, *names: str) -> int:
    return next(int(getattr(config, n)) for n in names if getattr(config, n, None) is not None)


def memory_estimate(student: ModelHandle, opts: DistillOptions, teacher_bytes: int, seq_len: int,
                    device: torch.device) -> HealMemory:
    """The run's peak, from the student's shapes and the options."""
    cfg = student.config
    params = student.num_parameters()
    if opts.train == "lora":
        hidden = _config_int(cfg, "hidden_size")
        trained = student.num_layers * 7 * opts.lora_rank * 2 * hidden  # an upper bound: 7 Linears, two factors each
    elif opts.train == "all":
        trained = params
    else:
        trained = sum(p.numel() for n, p in student.model.named_parameters()
                      if (opts.train == "mlp" and ".mlp." in n) or (opts.train == "norms" and "norm" in n.lower()))
    return estimate(params, teacher_bytes, trained, opts.batch_size * seq_len,
                    _config_int(cfg, "hidden_size"), _config_int(cfg, "intermediate_size", "hidden_size"),
                    student.num_layers, _config_int(cfg, "vocab_size"), opts.gradient_checkpointing,
                    available_bytes(device))


def check_fits(est: HealMemory) -> None:
    """Refuse (exit 6) a run whose estimate clearly exceeds the free memory."""
    if est.available is not None and est.total > est.available:
        raise ResourceError(f"healing needs about {est.total / 2**30:.2f} GiB but only "
                            f"{est.available / 2**30:.2f} GiB is free ({est.describe()})",
                            hint="use a smaller batch_size or seq_len, gradient_checkpointing: true, or train: lora")


class Distill(Method):
    """Knowledge distillation from the original model into the pruned one."""

    name = "distill"
    stage = "heal"
    summary = "heal a pruned model: distil the original into it (logit KL, optional hidden-state MSE; all/mlp/norms/LoRA)"
    Options = DistillOptions

    def conformance_options(self) -> list[dict[str, Any]]:
        """Short runs for the conformance kit's tiny models."""
        return [{"steps": 2, "holdout": 2, "batch_size": 1, "eval_every": 1},
                {"steps": 2, "holdout": 2, "batch_size": 1, "train": "lora", "lora_rank": 2}]

    def apply(self, model: ModelHandle, options: Any, ctx: StageContext) -> dict[str, Any]:
        """Train the student ``model`` in place to match the teacher; keep its shapes; return the run's record."""
        opts: DistillOptions = options
        ids = _windows(ctx.heal_ids(), opts.seq_len)
        if ids.shape[0] < opts.holdout + opts.batch_size:
            raise UsageError(f"data.heal gives {ids.shape[0]} windows; distill needs holdout ({opts.holdout}) plus "
                             f"at least one batch ({opts.batch_size})",
                             hint="raise data.heal.samples, or lower holdout or batch_size")
        device = next(model.model.parameters()).device

        def fits(teacher_bytes: int) -> bool:
            est = memory_estimate(model, opts, teacher_bytes, ids.shape[1], device)
            return est.available is None or est.total <= est.available

        teacher = open_teacher(ctx, opts.teacher, fits)
        est = memory_estimate(model, opts, teacher.resident_bytes, ids.shape[1], device)
        ctx.log(f"{est.describe()}; teacher {'in memory' if teacher.where == 'memory' else 'on disk, layer by layer'}")
        check_fits(est)
        teacher.handle.model.requires_grad_(False).eval()
        teacher_digest = teacher.digest()
        pairs = boundary_pairs(model.original_layer_indices(), teacher.handle.num_layers) if opts.hidden_weight else []
        holdout, train_ids = ids[-opts.holdout:].to(device), ids[:-opts.holdout].to(device)
        dtype = next(model.model.parameters()).dtype
        student = model.model.float()
        lora_record: dict[str, Any] = {}
        if opts.train == "lora":
            student.requires_grad_(False)
            frozen_before = frozen_digest(student)
            student = attach_lora(student, opts.lora_rank, opts.lora_alpha, ctx.seed)
            params = [p for p in student.parameters() if p.requires_grad]
        else:
            params = select_parameters(student, opts.train)
        if opts.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(ctx.seed)
        try:
            result = train(student, teacher, params, train_ids, holdout, opts, pairs, ctx.seed, ctx.log)
        finally:
            if opts.gradient_checkpointing:
                student.gradient_checkpointing_disable()
        if opts.train == "lora":
            lora_record = self._merge(student, holdout[: opts.batch_size], frozen_before, result)
            student = model.model  # merging gave back the same module object, now without adapters
        student.requires_grad_(False)
        if teacher.digest() != teacher_digest:  # a guard: the teacher is the release's reference
            raise UsageError("the heal stage modified the teacher's weights; this is a bug in distill")
        model.model.to(dtype)
        where = teacher.where
        del teacher
        gc.collect()
        return {**self._record(opts, result, ids, pairs, est, lora_record), "teacher": where}

    @staticmethod
    def _merge(peft_model: Any, probe: torch.Tensor, frozen_before: str,
               result: HealResult) -> dict[str, Any]:
        """Check that training left the frozen weights alone, merge the adapters and check the merge keeps the function."""
        frozen_unchanged = frozen_digest(peft_model) == frozen_before
        with torch.no_grad():
            before = peft_model(input_ids=probe, use_cache=False).logits
            merged = merge_lora(peft_model)
            after = merged(input_ids=probe, use_cache=False).logits
        diff = float((before - after).abs().max())
        if not frozen_unchanged:
            raise UsageError("LoRA training changed a frozen weight; this is a bug in distill")
        if diff > MERGE_TOLERANCE:
            raise UsageError(f"merging the LoRA adapters changed the logits by up to {diff:.2e} "
                             f"(tolerance {MERGE_TOLERANCE:g}); this is a bug in distill")
        return {"frozen_weights_unchanged": frozen_unchanged, "merge_max_abs_logit_diff": diff}

    @staticmethod
    def _record(opts: DistillOptions, result: HealResult, ids: torch.Tensor,
                pairs: list[tuple[int, int]], est: HealMemory, lora: dict[str, Any]) -> dict[str, Any]:
        first, final = result.evaluations[0], result.best
        x = [e.step for e in result.evaluations]
        curves = [loss_curve("distillation loss per step", "step", "loss", range(1, len(result.train_loss) + 1),
                             train=result.train_loss),
                  loss_curve("held-out KL to the teacher", "step", "KL (nats/token)", x,
                             held_out=[e.kl for e in result.evaluations])]
        return {"train": opts.train, "steps": result.steps_run, "best_step": final.step,
                "stopped_early": result.stopped_early, "tokens_seen": result.tokens_seen,
                "train_windows": int(ids.shape[0] - opts.holdout), "holdout_windows": opts.holdout,
                "seq_len": int(ids.shape[1]), "train_seconds": round(result.seconds, 2),
                "held_out_before": first.to_dict(), "held_out_after": final.to_dict(),
                "evaluations": [e.to_dict() for e in result.evaluations], "hidden_boundaries": len(pairs),
                "memory_estimate_gib": est.to_dict(), **({"lora": lora} if lora else {}), "loss_curves": curves}
