"""LoRA's part of adapter combination (methods/combine.py): PEFT's LoraModel.add_weighted_adapter.

The new adapter has alpha = r, so its scaling is 1 and each source's scaling s_i is folded into
the combined factors:

  linear, ties, dare_*, magnitude_prune  A = reduce(c_i A_i), B = reduce(|c_i| B_i) with
                                         c_i = sign(w_i s_i) sqrt|w_i s_i| (equal ranks)
  cat                                    A = [w_1 s_1 A_1; ...], B = [B_1, ...] (rank sum r_i)
  svd, *_svd                             dW = reduce(s_i B_i A_i); B, A = top-svd_rank SVD of dW

Only `linear`-family on factors is an approximation of the weighted sum of updates (cross terms
B_i A_j appear); `cat` is exact and `svd` is exact up to the rank cut.
PEFT keeps `use_rslora` of the first source, which with alpha = r would scale the result by
sqrt(r); we write use_rslora=false so the scaling stays 1 (identical for plain-LoRA sources).
"""

import dataclasses

import torch

from ...errors import ConfigError
from ..base import adapter_configs, adapter_layers, inject_adapter
from ..combine import COMBINATIONS, CombineOptions, reduce
from ..registry import get_method
from .layers import LoraLinear

COMBINATION_NAMES = tuple(COMBINATIONS)


def combine_lora(model, adapters: list, weights: list, new_name: str, opts: CombineOptions):
    """Add LoRA adapter `new_name` combining `adapters` (checked by combine_adapters) as opts says."""
    cfgs = [adapter_configs(model)[a] for a in adapters]
    _check_sources(adapters, cfgs)
    rank = _new_rank(cfgs, opts)
    cfg = dataclasses.replace(
        cfgs[0],
        r=rank,
        alpha=float(rank),
        use_rslora=False,
        init="default",
        target_modules=_union_targets(cfgs),
    )
    inject_adapter(model, get_method(cfg.name), cfg, new_name)
    gen = opts.generator()  # one stream for the whole model, in module order (DARE)
    space = COMBINATIONS[opts.combination].space
    for path, layer in adapter_layers(model):
        if not isinstance(layer, LoraLinear) or new_name not in layer.adapter_names:
            continue
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.lora_A]
        a_new, b_new = _SPACES[space](layer, present, rank, opts, gen, path)
        with torch.no_grad():
            target_a, target_b = layer.lora_A[new_name].weight, layer.lora_B[new_name].weight
            target_a.zero_(), target_b.zero_()
            target_a[: a_new.shape[0]] = a_new.to(target_a.dtype)  # (r, in)
            target_b[:, : b_new.shape[1]] = b_new.to(target_b.dtype)  # (out, r)
    return cfg


def _check_sources(adapters: list, cfgs: list) -> None:
    for name, cfg in zip(adapters, cfgs):
        if cfg.use_dora or cfg.init == "pissa":
            variant = "DoRA" if cfg.use_dora else "PiSSA"
            fix = "" if cfg.use_dora else " (save it as plain LoRA first: save_pissa_as_lora)"
            raise ConfigError(
                f"adapter {name!r} is a {variant} adapter, which cannot be combined: its update is "
                f"not (alpha/r) * B @ A on the base weight{fix}"
            )


def _new_rank(cfgs: list, opts: CombineOptions) -> int:
    ranks = [c.r for c in cfgs]
    space = COMBINATIONS[opts.combination].space
    if space == "factors":
        if len(set(ranks)) != 1:
            raise ConfigError(
                f"combination {opts.combination} combines the A and B factors entry by entry, "
                f"so the adapters need one rank; they have r = {', '.join(map(str, ranks))}. "
                f"Use cat or svd (or an *_svd variant) for different ranks"
            )
        return ranks[0]
    if space == "cat":
        return sum(ranks)
    return opts.svd_rank or max(ranks)


def _union_targets(cfgs: list):
    targets = [c.target_modules for c in cfgs]
    if all(isinstance(t, str) for t in targets):
        return "|".join(f"({t})" for t in targets)
    if any(isinstance(t, str) for t in targets):
        raise ConfigError(
            "combine: some adapters give target_modules as a regex and others as a list of names; "
            "PEFT cannot combine such adapters either. Save them with the same kind of target_modules"
        )
    return sorted({name for t in targets for name in t})


def _factors(layer: LoraLinear, present, rank, opts, gen, path):
    coeffs = [w * layer.scaling[a] for a, w in present]
    signed = [abs(c) ** 0.5 * (1 if c >= 0 else -1) for c in coeffs]
    # the sign goes on A only, or it would cancel in B @ A
    a_new = reduce([layer.lora_A[a].weight.detach() for a, _ in present], signed, opts, gen)
    b_new = reduce(
        [layer.lora_B[a].weight.detach() for a, _ in present],
        [abs(c) ** 0.5 for c in coeffs],
        opts,
        gen,
    )
    return a_new, b_new


def _cat(layer: LoraLinear, present, rank, opts, gen, path):
    a_new = torch.cat([layer.lora_A[a].weight.detach() * w * layer.scaling[a] for a, w in present])
    b_new = torch.cat([layer.lora_B[a].weight.detach() for a, _ in present], dim=1)
    return a_new, b_new  # (sum r, in), (out, sum r)


def _svd(layer: LoraLinear, present, rank, opts, gen, path):
    deltas = [layer._lora_weight(a).detach() for a, _ in present]  # (out, in) each
    delta = reduce(deltas, [w for _, w in present], opts, gen)
    if rank > min(delta.shape):
        raise ConfigError(
            f"svd_rank {rank} exceeds the rank the update of {path} can have "
            f"({min(delta.shape)} = min(out, in)); give --svd-rank {min(delta.shape)} or less"
        )
    u, s, vh = torch.linalg.svd(delta, full_matrices=True)
    u = u[:, :rank] @ torch.diag(s[:rank])  # (out, r)
    vh = vh[:rank, :]  # (r, in)
    if opts.svd_clamp is not None:
        hi = torch.quantile(torch.cat([u.flatten(), vh.flatten()]), opts.svd_clamp)
        u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
    return vh, u


_SPACES = {"factors": _factors, "cat": _cat, "delta": _svd}
