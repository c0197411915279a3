"""VeRA (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"): one pair of frozen
random matrices A, B shared by every targeted layer, seeded so they can be regenerated, and per
layer two trained scaling vectors, dW = diag(lambda_b) B diag(lambda_d) A. Far fewer parameters
than LoRA (out + r per layer). Mergeable.
"""

from torch import nn

from ..base import MethodSpec, adapter_layers
from ..delta_linear import wrap_targets
from ..registry import register_method
from .config import PEFT_TYPE, VeraConfig, from_peft_config, to_peft_config
from .layers import VeraLinear, VeraProjection

__all__ = ["VeraConfig", "VeraLinear", "VeraProjection", "apply_vera"]


def apply_vera(model: nn.Module, cfg: VeraConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a VeraLinear and add adapter `adapter_name`.

    A and B are drawn (as PEFT draws them, from projection_prng_key) for the largest in and out
    features among the targets. Raises UnsupportedModuleError when the targets match nothing,
    ConfigError when a target is already wrapped by another method.
    """
    layers = wrap_targets(model, cfg.target_modules, VeraLinear)
    dims = (max(la.in_features for la in layers), max(la.out_features for la in layers))
    projection = _model_projection(model)
    device = layers[0].base_layer.weight.device
    projection.generate(adapter_name, cfg.r, dims, cfg.projection_prng_key, device)
    for layer in layers:
        layer.add_adapter(adapter_name, cfg, projection)


def _model_projection(model: nn.Module) -> VeraProjection:
    # One VeraProjection per model, shared by all its VeRA layers and adapters.
    for _, layer in adapter_layers(model):
        if isinstance(layer, VeraLinear) and layer.projection is not None:
            return layer.projection
    return VeraProjection()


register_method(
    MethodSpec(
        name="vera",
        config_cls=VeraConfig,
        apply=apply_vera,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
