"""BitFit (Ben Zaken et al. 2021): fine-tune only the bias terms, in place.

Every parameter named `bias` trains: attention and FFN linear biases, LayerNorm biases and the
LM-head bias. Their originals are kept for `disabled_adapters`.
"""

from torch import nn

from ..base import MethodSpec
from ..base_params import train_base_parameters
from ..registry import register_method
from .config import PEFT_TYPE, BitfitConfig, from_peft_config, to_peft_config
from .layers import bias_parameters

__all__ = ["BitfitConfig", "apply_bitfit"]


def apply_bitfit(model: nn.Module, cfg: BitfitConfig, adapter_name: str = "default") -> None:
    """Make every bias trainable as adapter `adapter_name`; everything else is frozen.

    Raises UnsupportedModuleError on a model without biases (the Llama family).
    """
    train_base_parameters(model, adapter_name, bias_parameters(model))


# can_merge: the trained biases are the model's own (see `full`).
register_method(
    MethodSpec(
        name="bitfit",
        config_cls=BitfitConfig,
        apply=apply_bitfit,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
