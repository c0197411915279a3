"""LN tuning (Zhao et al. 2024, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM
Finetuning"; PEFT's LN_TUNING): only the normalisation layers' weights (and biases) train, on
trained copies of the norms. Tiny adapters (a few vectors per block). Mergeable.
"""

from torch import nn

from ...utils.modules import replace_module
from ..base import MethodSpec
from ..registry import register_method
from .config import PEFT_TYPE, LnTuningConfig, from_peft_config, to_peft_config, with_targets
from .layers import LnTuningLayer, find_norms

__all__ = ["LnTuningConfig", "LnTuningLayer", "apply_ln_tuning"]


def apply_ln_tuning(model: nn.Module, cfg: LnTuningConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted norm in an LnTuningLayer and add adapter `adapter_name` (a copy).

    Raises UnsupportedModuleError when the targets match no norm or match another kind of layer.
    """
    for name in find_norms(model, cfg.target_modules):
        module = model.get_submodule(name)
        if not isinstance(module, LnTuningLayer):
            module = LnTuningLayer(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name)


def resolve(model: nn.Module, cfg: LnTuningConfig) -> LnTuningConfig:
    """Unset target_modules become the tail names of every norm of the model (for Llama
    input_layernorm, norm, post_attention_layernorm: PEFT's default); the result is saved."""
    names = sorted({n.split(".")[-1] for n in find_norms(model, None)})
    return with_targets(cfg, names)


register_method(
    MethodSpec(
        name="ln_tuning",
        config_cls=LnTuningConfig,
        apply=apply_ln_tuning,
        resolve=resolve,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
