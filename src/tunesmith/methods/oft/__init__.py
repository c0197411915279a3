"""OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"): each
targeted layer's input is rotated by a learned block-diagonal orthogonal matrix (Cayley transform
of skew-symmetric blocks), which keeps the angles between the weight's neurons. Starts at the
identity; mergeable (W' = W R^T). Options: COFT (coft/eps), block_share, Cayley-Neumann series,
module dropout; PEFT OFT format both ways (PEFT itself wraps nn.Linear only, not GPT-2's Conv1D).
"""

from torch import nn

from ...utils.modules import linear_dims, replace_module
from ..base import MethodSpec, find_target_linears
from ..registry import register_method
from .config import PEFT_TYPE, OftConfig, from_peft_config, to_peft_config
from .layers import OftLinear

__all__ = ["OftConfig", "OftLinear", "apply_oft"]


def apply_oft(model: nn.Module, cfg: OftConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in an OftLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when a layer's
    in_features is not divisible by the block size (checked on every layer before any change).
    """
    names = find_target_linears(model, cfg.target_modules)
    for name in names:
        cfg.blocks(_in_features(model.get_submodule(name)), name)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, OftLinear):
            module = OftLinear(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name, cfg, name)


def _in_features(module: nn.Module) -> int:
    return linear_dims(getattr(module, "base_layer", module))[0]


register_method(
    MethodSpec(
        name="oft",
        config_cls=OftConfig,
        apply=apply_oft,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
