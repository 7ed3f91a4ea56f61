"""The options of ``distill``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.api import PluginOptions

TrainWhat = Literal["all", "mlp", "norms", "lora"]


class DistillOptions(PluginOptions):
    """Knowledge distillation from the original model: losses, optimiser, what is trained, when it stops."""

    steps: int = Field(200, ge=1, le=1_000_000, description="optimiser steps")
    lr: float = Field(1e-4, gt=0, le=1, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine schedule ends at lr x this")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps before the cosine decay")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="clip the gradient norm to this")
    batch_size: int = Field(4, ge=1, description="windows per forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimiser step (gradient accumulation)")
    seq_len: int | None = Field(None, ge=8, description="tokens per training sequence: data.heal's windows are "
                                                        "cut to this length (default: as given)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the logit KL (the loss is scaled "
                                                      "by its square)")
    kl_weight: float = Field(1.0, ge=0, description="weight of KL(teacher || student) on the logits")
    hidden_weight: float = Field(0.0, ge=0, description="weight of the normalised MSE between hidden states at "
                                                        "matching layer boundaries")
    train: TrainWhat = Field("all", description="what is trained: all parameters, the MLPs, the norms, or LoRA "
                                                "adapters (peft) merged into the weights afterwards")
    lora_rank: int = Field(16, ge=1, description="LoRA rank (train: lora)")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (train: lora)")
    holdout: int = Field(16, ge=1, description="windows of data.heal kept out of training for the held-out loss")
    eval_every: int = Field(25, ge=1, description="steps between held-out evaluations")
    patience: int = Field(2, ge=1, description="stop after this many held-out evaluations in a row without a "
                                               "new best")
    teacher: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where the original model's weights live while it teaches: in memory, or left in its "
                            "safetensors files and run layer by layer (slower, one layer in RAM); auto: memory when "
                            "the run fits")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                                            "memory, about a third more compute")

    @model_validator(mode="after")
    def _some_loss(self) -> DistillOptions:
        if self.kl_weight == 0 and self.hidden_weight == 0:
            raise ValueError("kl_weight and hidden_weight are both 0: there is nothing to train on")
        return self
