"""Weighted combination of trained adapters into a new one (PEFT's `add_weighted_adapter`).

`combine_adapters(model, ["a", "b"], [0.7, 0.3], "mix", "ties", density=0.5)` adds adapter "mix"
to a model that holds "a" and "b". The arithmetic on task tensors (what PEFT's
`utils/merge_utils.py` defines) lives here, in the `REDUCERS` table; each method's own part
(which tensors it combines, and how) is its `MethodSpec.combine`, and the combination names it
accepts are its `MethodSpec.combinations`. A `Combination` says which reducer a name uses and on
what it acts:

  factors  each adapter's factors separately (LoRA: A and B, each weighted by sign * sqrt|w * s|);
           needs equal ranks; the result has that rank
  cat      LoRA's A and B concatenated along the rank (rank = sum of ranks, exact)
  delta    the full update dW = s * B @ A, reduced, then cut to svd_rank by an SVD

Randomness (DARE): the drop masks are drawn from one torch.Generator seeded with
`CombineOptions.seed` (default 0), layer by layer in module order, and within a layer the tensors
in PEFT's order (for LoRA: every adapter's A, then every adapter's B). The same seed gives the
same adapter; the global torch RNG is not touched.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import adapter_configs
from .registry import get_method

SIGN_METHODS = ("total", "frequency")


@dataclass
class CombineOptions:
    """Settings of one combination; `density` is required by the pruning ones and refused by others."""

    combination: str = "linear"
    density: Optional[float] = None  # fraction of entries kept, in (0, 1]
    svd_rank: Optional[int] = None  # rank of an svd result (default: the largest input rank)
    svd_clamp: Optional[float] = None  # quantile at which the SVD factors are clamped
    majority_sign: str = "total"  # TIES sign election: "total" (sum) or "frequency" (count)
    seed: int = 0  # DARE's drop masks

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


# --- reducers: (tensors, weights (N,), options, generator) -> one tensor ----------------------
def _weighted_sum(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights.view(weights.shape + (1,) * (stacked.dim() - 1))  # (N, 1, ...)
    return (stacked * w).sum(dim=0)


def _keep_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[torch.topk(t.abs().reshape(-1), k=k).indices] = 1
    return t * mask.view_as(t)


def _drop_random(t: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=gen)
    return t * mask / density  # rescaled so the expected value is unchanged (DARE)


def _sign_agreeing_mean(stacked: torch.Tensor, weights, opts: CombineOptions) -> torch.Tensor:
    # TIES: elect a sign per entry (from the unweighted tensors), then average the weighted
    # entries that agree with it.
    sign = stacked.sign()
    votes = stacked.sum(dim=0) if opts.majority_sign == "total" else sign.sum(dim=0)
    agree = sign == torch.where(votes >= 0, 1, -1)
    weighted = stacked * weights.view(weights.shape + (1,) * (stacked.dim() - 1))
    return (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)


def task_arithmetic(tensors, weights, opts, gen):
    return _weighted_sum(torch.stack(tensors), weights)


def magnitude_prune(tensors, weights, opts, gen):
    return _weighted_sum(torch.stack([_keep_largest(t, opts.density) for t in tensors]), weights)


def ties(tensors, weights, opts, gen):
    stacked = torch.stack([_keep_largest(t, opts.density) for t in tensors])
    return _sign_agreeing_mean(stacked, weights, opts)


def dare_linear(tensors, weights, opts, gen):
    dropped = [_drop_random(t, opts.density, gen) for t in tensors]
    return _weighted_sum(torch.stack(dropped), weights)


def dare_ties(tensors, weights, opts, gen):
    dropped = [_drop_random(t, opts.density, gen) for t in tensors]
    return _sign_agreeing_mean(torch.stack(dropped), weights, opts)


REDUCERS: dict[str, Callable] = {
    "task_arithmetic": task_arithmetic,
    "magnitude_prune": magnitude_prune,
    "ties": ties,
    "dare_linear": dare_linear,
    "dare_ties": dare_ties,
}


@dataclass(frozen=True)
class Combination:
    reducer: str  # a REDUCERS key
    space: str  # "factors", "cat" or "delta" (module docstring)
    uses_density: bool = False
    uses_sign: bool = False


COMBINATIONS: dict[str, Combination] = {
    "linear": Combination("task_arithmetic", "factors"),
    "cat": Combination("task_arithmetic", "cat"),
    "svd": Combination("task_arithmetic", "delta"),
    "ties": Combination("ties", "factors", uses_density=True, uses_sign=True),
    "ties_svd": Combination("ties", "delta", uses_density=True, uses_sign=True),
    "dare_linear": Combination("dare_linear", "factors", uses_density=True),
    "dare_linear_svd": Combination("dare_linear", "delta", uses_density=True),
    "dare_ties": Combination("dare_ties", "factors", uses_density=True, uses_sign=True),
    "dare_ties_svd": Combination("dare_ties", "delta", uses_density=True, uses_sign=True),
    "magnitude_prune": Combination("magnitude_prune", "factors", uses_density=True),
    "magnitude_prune_svd": Combination("magnitude_prune", "delta", uses_density=True),
}


def reduce(tensors: list, weights: Sequence[float], opts: CombineOptions, gen) -> torch.Tensor:
    """Apply opts.combination's reducer to same-shaped tensors with per-tensor weights."""
    w = torch.tensor(list(weights), dtype=torch.float32, device=tensors[0].device)
    return REDUCERS[COMBINATIONS[opts.combination].reducer](tensors, w, opts, gen)


def combine_adapters(
    model: nn.Module,
    adapters: Sequence[str],
    weights: Sequence[float],
    new_name: str,
    opts: Optional[CombineOptions] = None,
    **options,
) -> nn.Module:
    """Add adapter `new_name`: the weighted combination of the model's adapters `adapters`.

    opts (or keyword options, see CombineOptions) picks the combination. The new adapter is the
    active one; the inputs stay loaded. With a single adapter every combination is `linear`, as in
    PEFT. Raises ConfigError for unknown adapters or combinations, a weights count that differs
    from the adapters count, a density missing, not needed or outside (0, 1], adapters of
    different methods, or a combination the method does not accept.
    """
    opts = opts or CombineOptions(**options)
    cfgs = _check(model, list(adapters), list(weights), new_name, opts)
    if len(adapters) == 1:
        opts = CombineOptions(**{**opts.__dict__, "combination": "linear", "density": None})
    get_method(cfgs[0].name).combine(model, list(adapters), list(weights), new_name, opts)
    return model


def _check(model, adapters: list, weights: list, new_name: str, opts: CombineOptions) -> list:
    loaded = adapter_configs(model)
    if not adapters:
        raise ConfigError("combine: give at least one adapter")
    missing = [a for a in adapters if a not in loaded]
    if missing:
        raise ConfigError(
            f"combine: no adapter named {', '.join(missing)}; loaded: {', '.join(loaded) or 'none'}"
        )
    if new_name in loaded:
        raise ConfigError(f"combine: adapter {new_name!r} exists already; pick another name")
    if len(weights) != len(adapters):
        raise ConfigError(
            f"combine: {len(weights)} weight(s) for {len(adapters)} adapter(s); give one weight "
            f"per adapter (e.g. --weights {','.join(['0.5'] * len(adapters))})"
        )
    _check_options(opts)
    cfgs = [loaded[a] for a in adapters]
    methods = sorted({c.name for c in cfgs})
    if len(methods) > 1:
        raise ConfigError(
            f"combine: the adapters are of different methods ({', '.join(methods)}); a weighted "
            f"combination needs adapters of one method (stack them instead: docs/methods/composition.md)"
        )
    spec = get_method(methods[0])
    if spec.combine is None or opts.combination not in spec.combinations:
        accepted = ", ".join(spec.combinations) or "none"
        raise ConfigError(
            f"combine: method {spec.name} does not take combination {opts.combination!r} "
            f"(it takes: {accepted})"
        )
    return cfgs


def _check_options(opts: CombineOptions) -> None:
    if opts.combination not in COMBINATIONS:
        raise ConfigError(
            f"combine: unknown combination {opts.combination!r}; one of {', '.join(COMBINATIONS)}"
        )
    comb = COMBINATIONS[opts.combination]
    if comb.uses_density and opts.density is None:
        raise ConfigError(
            f"combination {opts.combination} needs a density (fraction of entries kept), "
            f"e.g. --density 0.5"
        )
    if not comb.uses_density and opts.density is not None:
        raise ConfigError(
            f"combination {opts.combination} does not prune, so it takes no density "
            f"(got {opts.density}); drop --density or use ties, dare_linear, dare_ties or magnitude_prune"
        )
    if opts.density is not None and not 0 < opts.density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {opts.density}")
    if opts.majority_sign not in SIGN_METHODS:
        raise ConfigError(
            f"majority_sign must be one of {', '.join(SIGN_METHODS)}, got {opts.majority_sign!r}"
        )
    if opts.svd_rank is not None and opts.svd_rank < 1:
        raise ConfigError(f"svd_rank must be >= 1, got {opts.svd_rank}")
    if comb.space != "delta" and (opts.svd_rank is not None or opts.svd_clamp is not None):
        raise ConfigError(
            f"svd_rank and svd_clamp apply to the svd combinations, not to {opts.combination}"
        )
