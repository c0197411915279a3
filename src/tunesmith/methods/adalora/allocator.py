"""AdaLoRA's rank allocator (PEFT's RankAllocator, computed the same way, step for step).

After each optimizer update, with the update's gradients still on the parameters:
  sensitivity I = |w * grad| for every entry of A, B and E; its EMA I' = b1 I' + (1 - b1) I and
  the uncertainty U' = b2 U' + (1 - b2) |I - I'|; an entry's score is I' * U'.
  Direction i of a layer scores S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji).
The budget (kept directions over all layers) is init_r x layers up to update tinit, then falls
as a cubic to target_r x layers at update total_step - tfinal, and stays there. Every deltaT
updates, the directions scoring at or below the (init - budget)-th smallest score get E_i = 0.
At total_step - tfinal the final pattern is fixed (and the EMAs dropped); afterwards each update
re-applies it.

PEFT counts updates from 0 (`global_step`): update k here (from 1) is PEFT's step k - 1.
"""

import torch

from ..base import adapter_layers
from .config import AdaloraConfig
from .layers import SvdLinear

PARAMS = ("lora_A", "lora_B", "lora_E")


def svd_layers(model, adapter_name: str) -> dict[str, SvdLinear]:
    return {
        path: layer
        for path, layer in adapter_layers(model)
        if isinstance(layer, SvdLinear) and adapter_name in layer.adapter_names
    }


def budget_schedule(cfg: AdaloraConfig, step: int, init_bgt: int, target_bgt: int):
    """(budget, whether to mask at this step) at PEFT's 0-based `step`."""
    tinit, tfinal, total = cfg.tinit, cfg.tfinal, cfg.total_step
    if step <= tinit:
        return init_bgt, False
    if step > total - tfinal:
        return target_bgt, True
    mul_coeff = 1 - (step - tinit) / (total - tfinal - tinit)
    return int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt), step % cfg.deltaT == 0


def update_ipt(layers: dict[str, SvdLinear], name: str, cfg: AdaloraConfig) -> None:
    """Fold this update's sensitivities |w * grad| into the EMAs (entries without a gradient
    count as 0)."""
    b1, b2 = cfg.beta1, cfg.beta2
    with torch.no_grad():
        for layer in layers.values():
            ema = layer.ema.setdefault(name, {})
            for key in PARAMS:
                p = getattr(layer, key)[name]
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                ipt = (p * grad).abs().detach()
                avg = ema.get(f"ipt.{key}", torch.zeros_like(p))
                unc = ema.get(f"unc.{key}", torch.zeros_like(p))
                avg = b1 * avg + (1 - b1) * ipt
                ema[f"ipt.{key}"] = avg
                ema[f"unc.{key}"] = b2 * unc + (1 - b2) * (ipt - avg).abs()


def _scores(layer: SvdLinear, name: str) -> torch.Tensor:
    ema = layer.ema[name]
    s = {key: ema[f"ipt.{key}"] * ema[f"unc.{key}"] for key in PARAMS}
    ipt_a = torch.mean(s["lora_A"], dim=1, keepdim=True)  # (r, 1)
    ipt_b = torch.mean(s["lora_B"], dim=0, keepdim=False).view(-1, 1)  # (r, 1)
    ipt_ab = torch.cat([ipt_a, ipt_b], dim=1).sum(dim=1, keepdim=False)  # (r,)
    return s["lora_E"].view(-1) + ipt_ab.view(-1)  # (r,)


def mask_to_budget(layers: dict[str, SvdLinear], name: str, budget: int) -> None:
    """Keep the `budget` best-scoring directions over all layers (ties at the threshold go)."""
    scores = {path: _scores(layer, name) for path, layer in layers.items()}
    init_bgt = sum(s.numel() for s in scores.values())
    k = init_bgt - budget
    if k <= 0:  # nothing to prune (init_r == target_r); PEFT's kthvalue would fail on k = 0
        threshold = float("-inf")
    else:
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k=k)[0].item()
    for path, layer in layers.items():
        layer.set_keep(name, ~(scores[path] <= threshold))


def update_and_allocate(model, name: str, cfg: AdaloraConfig, update: int) -> bool:
    """Run the allocator after update `update` (from 1); True when it changed the rank pattern."""
    layers = svd_layers(model, name)
    if not layers or any(name in layer.fixed for layer in layers.values()):
        return False  # an adapter loaded at a saved rank pattern keeps it
    step, final = update - 1, cfg.total_step - cfg.tfinal
    init_bgt = sum(layer.lora_A[name].shape[0] for layer in layers.values())
    target_bgt = cfg.target_r * len(layers)
    if step > final:  # ranks fixed: re-apply the pattern Adam's momentum may have moved off
        for layer in layers.values():
            if name in layer.keep:
                layer.set_keep(name, layer.keep[name])
        return False
    if step < final:
        update_ipt(layers, name, cfg)
    budget, mask = budget_schedule(cfg, step, init_bgt, target_bgt)
    if not (mask or step == final):
        return False
    mask_to_budget(layers, name, budget)
    if step == final:  # PEFT's reset_ipt: the EMAs are no longer needed
        for layer in layers.values():
            layer.ema.pop(name, None)
    return True


def rank_pattern(layers: dict[str, SvdLinear], name: str):
    """PEFT's rank_pattern: {<layer path>.lora_E: [kept?] * r}, or None before any masking."""
    if not any(name in layer.keep for layer in layers.values()):
        return None
    return {f"{path}.lora_E": layer.keep[name].tolist() for path, layer in layers.items()}


def orth_regularizer(model, name: str, weight: float):
    """weight * mean over A and B of ||A A^T - I||_F and ||B^T B - I||_F (PEFT's penalty)."""
    terms = []
    for layer in svd_layers(model, name).values():
        a, b = layer.lora_A[name], layer.lora_B[name]
        for cov in (a @ a.T, b.T @ b):  # (r, r)
            eye = torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
            terms.append(torch.norm(cov - eye, p="fro"))
    return weight * (sum(terms) / len(terms)) if terms else None
