"""Run the frozen lower blocks of a backbone once per input, then train on the top blocks only.

When only the top blocks (and what follows them: final norm, heads) train, the output of the
frozen blocks below them is the same at every epoch. `FrozenPrefix.capture` computes it once (the
forward stops at the first trained block), `FrozenPrefix.top` feeds it to the top blocks as
`inputs_embeds`. That is exact only for backbones that pass `inputs_embeds` straight to the blocks
(Llama family); `FrozenPrefix.is_exact` checks it numerically, and callers fall back otherwise.
The frozen blocks run in eval mode (no dropout) while captured.
"""

import logging
from typing import Optional

import torch
from torch import nn

from ..errors import UnsupportedModuleError
from ..utils.modules import get_submodule_parent, named_transformer_blocks

log = logging.getLogger(__name__)
FINAL_NORMS = (
    "norm",
    "ln_f",
    "final_layer_norm",
    "final_layernorm",
)  # backbone children after the blocks


class _Stop(Exception):
    """Raised by the capture hook so the forward pass ends at the first trained block."""


def frozen_prefix_length(model: nn.Module, backbone: nn.Module) -> int:
    """How many leading blocks can be cached: those before the first block holding a trainable
    parameter, provided every other trainable parameter of `model` sits after the blocks (final norm,
    heads outside the backbone). 0 when anything before the blocks trains (embeddings, prompts)."""
    try:
        blocks_name, blocks = named_transformer_blocks(backbone)
    except UnsupportedModuleError:
        return 0
    in_backbone = {id(p): n for n, p in backbone.named_parameters()}
    allowed = (f"{blocks_name}.", *(f"{n}." for n in FINAL_NORMS))
    for p in model.parameters():
        if p.requires_grad and id(p) in in_backbone and not in_backbone[id(p)].startswith(allowed):
            return 0
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(blocks)


class FrozenPrefix:
    """The first k blocks of `backbone`, captured once per input; whole=True: the entire frozen
    backbone (its last_hidden_state, exact for any architecture)."""

    def __init__(self, backbone: nn.Module, k: int, whole: bool = False):
        self.backbone, self.k, self.whole = backbone, k, whole
        self.blocks_name, self.blocks = named_transformer_blocks(backbone)

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, H) entering block k (or leaving the last block when k = all)."""
        if self.whole:
            return _eval_forward(self.backbone, input_ids, attention_mask).detach()
        got = {}
        if self.k < len(self.blocks):

            def hook(module, args, kwargs):
                got["h"] = args[0] if args else kwargs["hidden_states"]
                raise _Stop

            handle = self.blocks[self.k].register_forward_pre_hook(hook, with_kwargs=True)
        else:

            def hook(module, args, output):
                got["h"] = output[0] if isinstance(output, tuple) else output
                raise _Stop

            handle = self.blocks[-1].register_forward_hook(hook)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
        finally:
            handle.remove()
            self.backbone.train(was_training)
        return got["h"].detach()

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        """last_hidden_state (B, T, H) of the backbone given `hidden` from capture()."""
        if self.whole:
            return hidden
        parent, attr = get_submodule_parent(self.backbone, self.blocks_name)
        setattr(parent, attr, nn.ModuleList(list(self.blocks)[self.k :]))
        try:
            return self.backbone(
                inputs_embeds=hidden, attention_mask=attention_mask
            ).last_hidden_state
        finally:
            setattr(parent, attr, self.blocks)

    @torch.no_grad()
    def is_exact(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tol: float = 1e-4
    ) -> bool:
        """True when top(capture(x)) equals the plain forward pass on x (real tokens, fp32, eval mode)."""
        full = _eval_forward(self.backbone, input_ids, attention_mask)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            cached = self.top(self.capture(input_ids, attention_mask), attention_mask)
        finally:
            self.backbone.train(was_training)
        real = attention_mask.bool()
        diff = (full[real] - cached[real]).abs().max().item()
        ok = diff <= tol * max(1.0, full[real].abs().max().item())
        log.info(
            "frozen-prefix cache of %d blocks: max difference %.2e -> %s",
            self.k,
            diff,
            "used" if ok else "not exact",
        )
        return ok


def make_prefix(
    model: nn.Module, backbone: nn.Module, probe: Optional[tuple]
) -> Optional[FrozenPrefix]:
    """A checked FrozenPrefix for `model` when at least one block is frozen and caching is exact on
    `probe` (input_ids, attention_mask); else None."""
    if not any(p.requires_grad for p in backbone.parameters()):
        return FrozenPrefix(backbone, 0, whole=True)
    k = frozen_prefix_length(model, backbone)
    if k == 0 or probe is None:
        return None
    prefix = FrozenPrefix(backbone, k)
    return prefix if prefix.is_exact(*probe) else None


def _eval_forward(backbone: nn.Module, input_ids, attention_mask) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    try:
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        backbone.train(was_training)
