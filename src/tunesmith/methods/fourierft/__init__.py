"""FourierFT (Gao et al. 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform"):
each targeted linear layer's update is the real part of the inverse 2-D DFT of a sparse spectrum,
n trained coefficients at frequencies drawn once from a seed. n parameters per layer, independent
of the layer's size. Mergeable.
"""

from torch import nn

from ...errors import ConfigError
from ...utils.modules import linear_dims
from ..base import MethodSpec, find_target_linears
from ..delta_linear import wrap_targets
from ..registry import register_method
from .config import PEFT_TYPE, FourierFTConfig, from_peft_config, to_peft_config
from .layers import FourierFTLinear

__all__ = ["FourierFTConfig", "FourierFTLinear", "apply_fourierft"]


def apply_fourierft(model: nn.Module, cfg: FourierFTConfig, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in a FourierFTLinear and add adapter `adapter_name`.

    Raises UnsupportedModuleError when the targets match nothing, ConfigError when a target is
    already wrapped by another method or has fewer than n_frequency weights.
    """
    for name in find_target_linears(model, cfg.target_modules):  # check before wrapping anything
        module = model.get_submodule(name)
        inp, out = linear_dims(getattr(module, "base_layer", module))
        if cfg.n_frequency > inp * out:
            raise ConfigError(
                f"method.n_frequency={cfg.n_frequency} exceeds the {out} x {inp} = {inp * out} "
                f"weights of {name}; use n_frequency <= {inp * out} or target larger layers"
            )
    for layer in wrap_targets(model, cfg.target_modules, FourierFTLinear):
        layer.add_adapter(adapter_name, cfg)


register_method(
    MethodSpec(
        name="fourierft",
        config_cls=FourierFTConfig,
        apply=apply_fourierft,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
