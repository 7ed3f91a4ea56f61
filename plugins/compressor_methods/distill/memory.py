"""What a heal run holds in memory at its peak, estimated before any training."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class HealMemory:
    """Bytes by part: both models' weights, gradients and AdamW's two moments, and one micro-batch's activations."""

    student: int
    teacher: int
    gradients: int
    optimizer: int
    activations: int
    available: int | None

    @property
    def total(self) -> int:
        """Sum of the parts."""
        return self.student + self.teacher + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        """One line for the log and the report."""
        avail = "unknown" if self.available is None else f"{self.available / GIB:.2f} GiB"
        return (f"heal memory estimate: {self.total / GIB:.2f} GiB (student {self.student / GIB:.2f}, teacher "
                f"{self.teacher / GIB:.2f}, gradients {self.gradients / GIB:.2f}, optimizer {self.optimizer / GIB:.2f}, "
                f"activations {self.activations / GIB:.2f}); available {avail}")

    def to_dict(self) -> dict[str, float]:
        """GiB by part, for the report."""
        parts = {k: getattr(self, k) for k in ("student", "teacher", "gradients", "optimizer", "activations")}
        return {**{k: round(v / GIB, 3) for k, v in parts.items()}, "total": round(self.total / GIB, 3)}


def estimate(student_params: int, teacher_bytes: int, trained_params: int, tokens: int,
             hidden: int, intermediate: int, layers: int, vocab: int, checkpointing: bool,
             available: int | None) -> HealMemory:
    """Estimate a heal run's peak from parameter counts, the teacher's resident bytes and the micro-batch's ``tokens``.

    Activations: a decoder layer keeps about 16 hidden-sized and 3 MLP-sized values per token for
    its backward pass (float32); with checkpointing one hidden state per layer plus one layer's full set.
    The logits of both models, the two log-softmaxes and the gradient add 5 vocabulary-sized values per token.
    """
    per_layer = tokens * (16 * hidden + 3 * intermediate) * 4
    kept = layers * tokens * hidden * 4 + per_layer if checkpointing else layers * per_layer
    logits = 5 * tokens * vocab * 4
    return HealMemory(student=student_params * 4, teacher=teacher_bytes,
                      gradients=trained_params * 4, optimizer=trained_params * 8, activations=kept + logits,
                      available=available)
