"""Full fine-tuning: every weight of the base model trains, in place.

The originals are kept (one copy of the model's weights) so `disabled_adapters` still shows the
base model; the saved "adapter" holds every weight under PEFT-style names.
"""

from torch import nn

from ..base import MethodSpec
from ..base_params import train_base_parameters
from ..registry import register_method
from .config import PEFT_TYPE, FullConfig, from_peft_config, to_peft_config
from .layers import full_parameters

__all__ = ["FullConfig", "apply_full"]


def apply_full(model: nn.Module, cfg: FullConfig, adapter_name: str = "default") -> None:
    """Make every base parameter trainable as adapter `adapter_name` (in place)."""
    train_base_parameters(model, adapter_name, full_parameters(model))


# can_merge: the trained weights are the model's own, so merging is a no-op and merge_and_unload
# simply returns the fine-tuned model.
register_method(
    MethodSpec(
        name="full",
        config_cls=FullConfig,
        apply=apply_full,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
        applies_on_meta=lambda cfg: True,
    )
)
