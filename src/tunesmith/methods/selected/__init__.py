"""Selected-module fine-tuning: train the last K transformer blocks and/or modules chosen by name
(e.g. the last block + final norm + lm_head); everything else stays frozen.

Like `full`, the chosen weights train in place and their originals are kept for `disabled_adapters`.
"""

import logging

from torch import nn

# (path, list) under its old name here; new code imports utils.modules.named_transformer_blocks
from ...utils.modules import named_transformer_blocks as transformer_blocks
from ..base import MethodSpec
from ..base_params import train_base_parameters
from ..registry import register_method
from .config import PEFT_TYPE, SelectedConfig, from_peft_config, to_peft_config
from .layers import match_modules, selected_parameters, top_block_names

__all__ = ["SelectedConfig", "apply_selected", "transformer_blocks"]
log = logging.getLogger(__name__)


def apply_selected(model: nn.Module, cfg: SelectedConfig, adapter_name: str = "default") -> None:
    """Train the last cfg.top_k_layers blocks and the modules cfg.modules names (in place).

    Raises ConfigError when top_k_layers exceeds the block count, UnsupportedModuleError (listing
    the model's modules) when an entry of cfg.modules matches nothing.
    """
    names = (top_block_names(model, cfg.top_k_layers) if cfg.top_k_layers else []) + match_modules(
        model, cfg.modules
    )
    log.info("selected: training %d module(s): %s", len(names), ", ".join(names))
    train_base_parameters(model, adapter_name, selected_parameters(model, names))


# can_merge: the trained weights are the model's own (see `full`).
register_method(
    MethodSpec(
        name="selected",
        config_cls=SelectedConfig,
        apply=apply_selected,
        can_merge=True,
        peft_type=PEFT_TYPE,
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
    )
)
