"""Bottleneck adapters: down-project, nonlinearity, up-project, residual.

Placements: houlsby (Houlsby et al. 2019: after the attention output and after the FFN),
pfeiffer (Pfeiffer et al. 2020: after the FFN only) and parallel (He et al. 2021: beside the FFN,
its output added). Works on Llama-style, GPT-2 and BERT-style models; not mergeable.
"""

from torch import nn

from ...errors import ConfigError
from ...utils.modules import replace_module
from ..base import MethodSpec
from ..registry import register_method
from .config import PEFT_TYPE, AdapterConfig, from_peft_config, to_peft_config
from .layers import BottleneckAdapter, placement_targets

__all__ = ["AdapterConfig", "BottleneckAdapter", "apply_adapter"]


def apply_adapter(model: nn.Module, cfg: AdapterConfig, adapter_name: str = "default") -> None:
    """Wrap the modules cfg.placement names in BottleneckAdapters and add adapter `adapter_name`.

    The method's own part of `MethodSpec.apply`: afterwards only the new adapter's projections
    train. Raises UnsupportedModuleError for an unknown model
    layout, ConfigError when reduction_factor leaves an empty bottleneck.
    """
    hidden = (
        model.config.hidden_size
    )  # wrapped modules output (serial) or take (parallel) the model width
    bottleneck = _bottleneck(hidden, cfg.reduction_factor)
    for name, mode in placement_targets(model, cfg.placement):
        module = model.get_submodule(name)
        if not isinstance(module, BottleneckAdapter):
            module = BottleneckAdapter(module, mode)
            replace_module(model, name, module)
        module.add_adapter(
            adapter_name, hidden, bottleneck, cfg.non_linearity, cfg.scaling, cfg.init_std
        )


def _bottleneck(hidden: int, reduction_factor: int) -> int:
    if hidden // reduction_factor < 1:
        raise ConfigError(
            f"method.reduction_factor={reduction_factor} leaves no bottleneck for hidden size "
            f"{hidden}; use at most {hidden}"
        )
    return hidden // reduction_factor


register_method(
    MethodSpec(
        name="adapter",
        config_cls=AdapterConfig,
        apply=apply_adapter,
        can_merge=False,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
