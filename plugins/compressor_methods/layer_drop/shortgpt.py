"""``layer_drop``: remove whole decoder layers by Block Influence (ShortGPT) or angular distance (Gromov et al.)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from compressor.api import (Kind, LayerSimilarity, Method, ModelHandle, StageContext, layer_parameters,
                            measure_similarity)

from .amount import DepthAmount, check_target, fixed_count, prefix_count_reaching, smallest_count_reaching
from .selection import argmin_start, consecutive, lowest


class LayerDropOptions(DepthAmount):
    """Options of ``layer_drop``."""

    criterion: Literal["block_influence", "angular"] = Field(
        "block_influence",
        description="block_influence: ShortGPT, drop the layers whose output is most similar to their input "
                    "(any positions); angular: Gromov et al., drop the consecutive block whose input and output "
                    "are closest in angle.")
    iterative: bool = Field(False, description="block_influence only: recompute BI after each removed layer "
                                               "(one calibration pass per layer) instead of removing all at once.")
    all_tokens: bool = Field(False, description="angular only: average the distance over every token instead of "
                                                "the last token of each window (the paper's choice).")
    batch_size: int = Field(4, ge=1, description="Calibration windows per forward pass.")

    @model_validator(mode="after")
    def _options_match_criterion(self) -> LayerDropOptions:
        if self.iterative and self.criterion != "block_influence":
            raise ValueError("iterative applies only to criterion block_influence")
        if self.all_tokens and self.criterion != "angular":
            raise ValueError("all_tokens applies only to criterion angular")
        return self


def _layer_sizes(model: ModelHandle) -> list[int]:
    return [layer_parameters(model, i) for i in range(model.num_layers)]


def select_block_influence(sim: LayerSimilarity, count: int) -> list[int]:
    """ShortGPT one-shot: the ``count`` layers with the lowest Block Influence."""
    return lowest(sim.block_influence(), count)


def select_angular(sim: LayerSimilarity, count: int, all_tokens: bool = False) -> list[int]:
    """Gromov et al.: the ``count`` consecutive layers starting at argmin_l d(l, count)."""
    return consecutive(argmin_start(sim.angular_distance(count, all_tokens)), count)


class LayerDrop(Method):
    """Depth pruning: the model really gets fewer decoder layers (stock-architecture output)."""

    name = "layer_drop"
    stage = "prune"
    summary = "Remove whole decoder layers by Block Influence (ShortGPT) or angular distance (Gromov et al.)"
    Options = LayerDropOptions

    def conformance_options(self) -> list[dict[str, Any]]:
        """One layer off the conformance kit's 4-layer models."""
        return [{"layers": 1}]

    def needs_calibration(self, options: Any) -> bool:
        """Scoring layers needs calibration activations."""
        return True

    def supports_offload(self, options: Any) -> bool:
        """Works on a model whose layers live on disk: scoring streams the layers through one forward; dropping renumbers the stored layers."""
        return True

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Fewer layers, each unchanged."""
        return frozenset({Kind.DEPTH})

    def apply(self, model: ModelHandle, options: LayerDropOptions, ctx: StageContext) -> dict[str, Any]:
        """Score the layers on the calibration windows and drop the chosen ones."""
        windows = ctx.calibration_ids()
        before_layers, before_params = model.num_layers, model.num_parameters()
        count = fixed_count(options, before_layers)
        if options.criterion == "block_influence" and options.iterative:
            removed, order, rounds = self._iterative(model, options, windows, count, ctx)
            scores: dict[str, Any] = {"removal_order": order, "block_influence_rounds": rounds}
        else:
            sim = measure_similarity(model, windows, options.batch_size)
            removed, scores = self._one_shot(model, options, sim, count)
            model.drop_layers(removed)
        model.sync_config()
        ctx.log(f"layer_drop ({options.criterion}{', iterative' if options.iterative else ''}): removed layers "
                f"{removed}, {before_layers} -> {model.num_layers} layers")
        return {"criterion": options.criterion, "iterative": options.iterative,
                **({"all_tokens": options.all_tokens} if options.criterion == "angular" else {}),
                "amount": options.describe_amount(), "removed_layers": removed,
                "kept_layers": [i for i in range(before_layers) if i not in set(removed)],
                "layers_before": before_layers, "layers_after": model.num_layers,
                "parameters_before": before_params, "parameters_after": model.num_parameters(),
                "calibration": {"windows": int(windows.shape[0]), "tokens_per_window": int(windows.shape[1])},
                "scores": scores}

    def _one_shot(self, model: ModelHandle, options: LayerDropOptions, sim: LayerSimilarity,
                  count: int | None) -> tuple[list[int], dict[str, Any]]:
        total, n_layers = model.num_parameters(), model.num_layers
        sizes = _layer_sizes(model)
        if options.criterion == "block_influence":
            bi = sim.block_influence()
            if count is None:
                order = lowest(bi, n_layers)
                count = prefix_count_reaching(check_target(options, total), [sizes[i] for i in order],
                                              n_layers - 1, total, options.target_params or 0)
            return sorted(select_block_influence(sim, count)), {"block_influence": _floats(bi)}
        if count is None:
            needed = check_target(options, total)

            def freed(n: int) -> int:
                return sum(sizes[i] for i in select_angular(sim, n, options.all_tokens))

            count = smallest_count_reaching(needed, freed, n_layers - 1, total, options.target_params or 0)
        dist = sim.angular_distance(count, options.all_tokens)
        return select_angular(sim, count, options.all_tokens), {f"angular_distance_n{count}": _floats(dist)}

    def _iterative(self, model: ModelHandle, options: LayerDropOptions, windows: Any, count: int | None,
                   ctx: StageContext) -> tuple[list[int], list[int], list[list[float]]]:
        original = list(range(model.num_layers))  # original index of each current layer
        total = model.num_parameters()
        needed = check_target(options, total) if count is None else 0
        removed: list[int] = []
        rounds: list[list[float]] = []
        freed = 0
        while (count is not None and len(removed) < count) or (count is None and freed < needed):
            if model.num_layers == 1:
                from compressor.api import UsageError

                raise UsageError(f"target_params={options.target_params:,} cannot be reached by removing decoder "
                                 "layers while keeping one", hint="set a larger target_params")
            bi = measure_similarity(model, windows, options.batch_size).block_influence()
            rounds.append(_floats(bi))
            victim = lowest(bi, 1)[0]
            freed += layer_parameters(model, victim)
            removed.append(original.pop(victim))
            model.drop_layers([victim])
            ctx.log(f"layer_drop iterative: removed original layer {removed[-1]} (BI {bi[victim]:.4f})")
        return sorted(removed), removed, rounds


def _floats(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]
