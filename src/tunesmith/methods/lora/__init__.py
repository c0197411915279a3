"""LoRA (Hu et al. 2021): low-rank updates on chosen linear layers; mergeable.

Variants: rsLoRA (use_rslora), DoRA (use_dora), PiSSA (init="pissa"); see config.py and layers.py.
"""

from torch import nn

from ...errors import ConfigError
from ...utils.modules import named_transformer_blocks, replace_module
from ..base import MethodSpec, find_target_linears, in_layers
from ..registry import register_method
from .combine import COMBINATION_NAMES, combine_lora
from .config import LoraConfig, from_peft_config, to_peft_config
from .convert import save_pissa_as_lora
from .layers import LoraLinear, check_quantized_variant
from .mixed import mixed_adapters

__all__ = ["LoraConfig", "LoraLinear", "apply_lora", "mixed_adapters", "save_pissa_as_lora"]


def apply_lora(model: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a LoraLinear and add adapter `adapter_name`.

    The method's own part of `MethodSpec.apply`: afterwards only the new adapter's A and B (and
    DoRA's magnitude) train. Quantized linear layers (QLoRA) are wrapped like nn.Linear. Raises
    UnsupportedModuleError when the targets match nothing, ConfigError when PiSSA would share a
    layer with another adapter or when DoRA or PiSSA is asked for on a quantized layer.
    """
    names = find_target_linears(model, cfg.target_modules)
    if cfg.layers_to_transform is not None:
        cfg.layers_to_transform = _absolute_blocks(model, cfg.layers_to_transform)
        names = in_layers(names, cfg.layers_to_transform, cfg.layers_pattern)
        if not names:
            raise ConfigError(
                f"method.layers_to_transform={cfg.layers_to_transform} keeps none of the "
                f"targeted layers (method.layers_pattern={cfg.layers_pattern!r})"
            )
    for name in names:  # check before changing anything: PiSSA rewrites base weights
        module = model.get_submodule(name)
        if isinstance(module, LoraLinear):
            module.check_can_add(adapter_name, cfg.init)
        check_quantized_variant(getattr(module, "base_layer", module), cfg.use_dora, cfg.init)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, LoraLinear):
            module = LoraLinear(module)
            replace_module(model, name, module)
        module.add_adapter(
            adapter_name, cfg.r, cfg.scaling, cfg.dropout, use_dora=cfg.use_dora, init=cfg.init
        )


def _absolute_blocks(model: nn.Module, layers: list) -> list:
    """Block indices with the negative ones counted from the last block; the config keeps these,
    so the saved adapter_config.json names the same blocks in PEFT's terms."""
    count = len(named_transformer_blocks(model)[1])
    if any(not -count <= i < count for i in layers):
        raise ConfigError(
            f"method.layers_to_transform={layers} is out of range for a model of {count} blocks"
        )
    return sorted({i % count for i in layers})


register_method(
    MethodSpec(
        name="lora",
        config_cls=LoraConfig,
        apply=apply_lora,
        can_merge=True,
        supports_4bit=True,
        peft_type="LORA",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
        combine=combine_lora,
        combinations=COMBINATION_NAMES,
        applies_on_meta=lambda cfg: not cfg.use_dora and cfg.init != "pissa",  # both read W0
    )
)
