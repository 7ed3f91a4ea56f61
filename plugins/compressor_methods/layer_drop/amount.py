"""How much a depth method removes: a layer count, a fraction of the layers, or a parameter target."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import Field, model_validator

from compressor.api import PluginOptions, UsageError


class DepthAmount(PluginOptions):
    """Exactly one of ``layers``, ``fraction`` or ``target_params``."""

    layers: int | None = Field(None, ge=1, description="Number of decoder layers to remove.")
    fraction: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="Fraction of the decoder layers to remove, rounded to the nearest "
                                               "layer (0.25 of 30 layers removes 8).")
    target_params: int | None = Field(None, ge=1,
                                      description="Remove the fewest layers that bring the model to at most this "
                                                  "many parameters (tied embeddings counted once).")

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> DepthAmount:
        given = [n for n in ("layers", "fraction", "target_params") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of layers, fraction or target_params"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    def describe_amount(self) -> dict[str, int | float]:
        """Return the one amount option that was set, for the report."""
        for name in ("layers", "fraction", "target_params"):
            value = getattr(self, name)
            if value is not None:
                return {name: value}
        return {}


def fixed_count(amount: DepthAmount, num_layers: int, max_count: int | None = None) -> int | None:
    """Resolve ``layers``/``fraction`` to a layer count checked against the model; None for ``target_params``."""
    limit = num_layers - 1 if max_count is None else max_count
    if amount.layers is not None:
        count = amount.layers
        what = f"layers={count}"
    elif amount.fraction is not None:
        count = int(amount.fraction * num_layers + 0.5)
        what = f"fraction={amount.fraction} ({count} of {num_layers} layers)"
    else:
        return None
    if count < 1:
        raise UsageError(f"{what} removes no layer of this {num_layers}-layer model",
                         hint="use a larger fraction or set layers")
    if count > limit:
        raise UsageError(f"{what} would remove too many layers: this {num_layers}-layer model allows at most {limit}",
                         hint=f"remove at most {limit} layers; at least one decoder layer must remain")
    return count


def check_target(amount: DepthAmount, total_params: int) -> int:
    """Return how many parameters ``target_params`` asks to remove, refusing a target the model already meets."""
    assert amount.target_params is not None
    if amount.target_params >= total_params:
        raise UsageError(f"target_params={amount.target_params:,} is not below the model's {total_params:,} "
                         "parameters, so there is nothing to remove",
                         hint="set a smaller target_params, or use layers/fraction")
    return total_params - amount.target_params


def smallest_count_reaching(needed: int, removed_params: Callable[[int], int], max_count: int,
                            total_params: int, target: int) -> int:
    """The smallest count n in 1..max_count whose removal frees at least ``needed`` parameters."""
    best = 0
    for n in range(1, max_count + 1):
        freed = removed_params(n)
        best = max(best, freed)
        if freed >= needed:
            return n
    raise UsageError(f"target_params={target:,} cannot be reached by removing decoder layers: at most "
                     f"{best:,} of the model's {total_params:,} parameters can go while keeping one layer",
                     hint=f"set target_params of at least {total_params - best:,}, or combine with width pruning")


def prefix_count_reaching(needed: int, sizes_in_order: Sequence[int], max_count: int,
                          total_params: int, target: int) -> int:
    """The smallest n such that removing the first n layers of ``sizes_in_order`` frees ``needed`` parameters."""
    return smallest_count_reaching(needed, lambda n: int(sum(sizes_in_order[:n])), max_count, total_params, target)
