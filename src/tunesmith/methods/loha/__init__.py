"""LoHa (Hyeon-Woo et al. 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning"; LyCORIS): the update of each targeted linear layer is the Hadamard product of
two rank-r products, so its rank can reach r^2 for 2r(in + out) parameters. Mergeable.
"""

from torch import nn

from ..base import MethodSpec
from ..delta_linear import wrap_targets
from ..registry import register_method
from .config import PEFT_TYPE, LohaConfig, from_peft_config, to_peft_config
from .layers import LohaLinear

__all__ = ["LohaConfig", "LohaLinear", "apply_loha"]


def apply_loha(model: nn.Module, cfg: LohaConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a LohaLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when a target is
    already wrapped by another method.
    """
    for layer in wrap_targets(model, cfg.target_modules, LohaLinear):
        layer.add_adapter(adapter_name, cfg)


register_method(
    MethodSpec(
        name="loha",
        config_cls=LohaConfig,
        apply=apply_loha,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
