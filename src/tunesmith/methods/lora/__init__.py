"""LoRA (Hu et al. 2021): low-rank updates on chosen linear layers; mergeable."""
from torch import nn

from ...utils.modules import replace_module
from ..base import MethodSpec, find_target_linears, mark_trainable, record_adapter
from ..registry import register_method
from .config import LoraConfig, from_peft_config, to_peft_config
from .layers import LoraLinear

__all__ = ["LoraConfig", "LoraLinear", "apply_lora"]


def apply_lora(model: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap every targeted linear layer in a LoraLinear and add adapter `adapter_name`.

    Only the new adapter's A and B train afterwards. Raises UnsupportedModuleError when the
    targets match nothing.
    """
    for name in find_target_linears(model, cfg.target_modules):
        module = model.get_submodule(name)
        if not isinstance(module, LoraLinear):
            module = LoraLinear(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name, cfg.r, cfg.scaling, cfg.dropout)
    # Layers wrapped earlier but not targeted now still hold the other adapters.
    for mod in model.modules():
        if isinstance(mod, LoraLinear) and adapter_name in mod.adapter_names:
            mod.set_active([adapter_name])
    record_adapter(model, adapter_name, cfg)
    mark_trainable(model, adapter_name)
    return model


register_method(MethodSpec(name="lora", config_cls=LoraConfig, apply=apply_lora, can_merge=True,
                           peft_type="LORA", to_peft_config=to_peft_config, from_peft_config=from_peft_config))
