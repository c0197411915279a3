"""LoKr (LyCORIS; the Kronecker adapter of Edalati et al. 2022, "KronA"): the update of each
targeted linear layer is a Kronecker product kron(W1, W2) of two factors whose shapes split the
layer's dimensions near their square roots, the larger factor low-rank when r is small. Very few
parameters for a full-rank-capable update. Mergeable.
"""

from torch import nn

from ..base import MethodSpec
from ..delta_linear import wrap_targets
from ..registry import register_method
from .config import PEFT_TYPE, LokrConfig, from_peft_config, to_peft_config
from .layers import LokrLinear, factorization

__all__ = ["LokrConfig", "LokrLinear", "apply_lokr", "factorization"]


def apply_lokr(model: nn.Module, cfg: LokrConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a LokrLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when a target is
    already wrapped by another method.
    """
    for layer in wrap_targets(model, cfg.target_modules, LokrLinear):
        layer.add_adapter(adapter_name, cfg)


register_method(
    MethodSpec(
        name="lokr",
        config_cls=LokrConfig,
        apply=apply_lokr,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
