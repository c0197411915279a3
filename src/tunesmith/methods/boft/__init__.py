"""BOFT (Liu et al. 2023, "Parameter-Efficient Orthogonal Finetuning via Butterfly
Factorization"): each targeted layer's input is rotated by a butterfly product of f block-diagonal
orthogonal matrices (Cayley transforms), so small blocks still mix all features, and each output
is scaled by a learned s. Starts at the identity; mergeable (W' = diag(s) W M^T). f = 1 is OFT with
an output scale. Pure PyTorch; PEFT's BOFT format both ways (PEFT wraps nn.Linear only, not
GPT-2's Conv1D).
"""

from torch import nn

from ...utils.modules import linear_dims
from ..base import MethodSpec, find_target_linears
from ..delta_linear import wrap_targets
from ..registry import register_method
from .config import PEFT_TYPE, BoftConfig, from_peft_config, to_peft_config
from .layers import BoftLinear, butterfly_permutation

__all__ = ["BoftConfig", "BoftLinear", "apply_boft", "butterfly_permutation"]


def apply_boft(model: nn.Module, cfg: BoftConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a BoftLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when the blocks do
    not fit a layer's in_features or a target holds another method's adapter (checked on every
    layer before any change).
    """
    names = find_target_linears(model, cfg.target_modules)
    for name in names:
        cfg.blocks(_in_features(model.get_submodule(name)), name)
    for name, layer in zip(names, wrap_targets(model, cfg.target_modules, BoftLinear)):
        layer.add_adapter(adapter_name, cfg, name)


def _in_features(module: nn.Module) -> int:
    return linear_dims(getattr(module, "base_layer", module))[0]


register_method(
    MethodSpec(
        name="boft",
        config_cls=BoftConfig,
        apply=apply_boft,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
