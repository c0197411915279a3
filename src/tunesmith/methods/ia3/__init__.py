"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): learned vectors rescale the keys, the values and the FFN inner activation.
Mergeable: each vector folds into rows (k, v) or columns (down projection) of a weight matrix.
"""

import re

from torch import nn

from ...errors import ConfigError
from ...utils.modules import replace_module
from ..base import MethodSpec, find_target_linears
from ..registry import register_method
from .combine import COMBINATION_NAMES, combine_ia3
from .config import Ia3Config, from_peft_config, resolve_defaults, to_peft_config
from .layers import Ia3Linear

__all__ = ["Ia3Config", "Ia3Linear", "apply_ia3"]


def apply_ia3(model: nn.Module, cfg: Ia3Config, adapter_name: str = "default") -> None:
    """Wrap every targeted linear layer in an Ia3Linear and add adapter `adapter_name`.

    The method's own part of `MethodSpec.apply`, given the config `resolve` completed; afterwards
    only the new vectors train. Raises UnsupportedModuleError when the targets match nothing,
    ConfigError when a layer is already wrapped with the other feedforward role.
    """
    roles = {
        name: is_feedforward(name, cfg.feedforward_modules)
        for name in find_target_linears(model, cfg.target_modules)
    }
    for name, feedforward in roles.items():  # check everything before changing the model
        _check_role(model.get_submodule(name), name, feedforward)
    for name, feedforward in roles.items():
        _wrap(model, name, feedforward).add_adapter(adapter_name)


def resolve(model: nn.Module, cfg: Ia3Config) -> Ia3Config:
    """Unset target/feedforward modules take the architecture's defaults; the result is recorded and
    saved. Raises ConfigError when this architecture has none."""
    return resolve_defaults(cfg, getattr(getattr(model, "config", None), "model_type", None))


def is_feedforward(name: str, feedforward_modules) -> bool:
    """PEFT's rule: a regex must match the full module name; a list entry matches its tail.

    (PEFT tests `name.endswith(entry)` with no dot, so "c_proj" would also match "attn.c_proj".)
    """
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, name) is not None
    return any(name.endswith(entry) for entry in feedforward_modules)


def _check_role(module: nn.Module, name: str, feedforward: bool) -> None:
    if isinstance(module, Ia3Linear) and module.is_feedforward != feedforward:
        raise ConfigError(
            f"{name} already holds (IA)^3 adapters with is_feedforward={module.is_feedforward}; "
            f"a second adapter must give it the same role (check method.feedforward_modules)"
        )


def _wrap(model: nn.Module, name: str, feedforward: bool) -> Ia3Linear:
    module = model.get_submodule(name)
    if not isinstance(module, Ia3Linear):
        module = Ia3Linear(module, is_feedforward=feedforward)
        replace_module(model, name, module)
    return module


register_method(
    MethodSpec(
        name="ia3",
        config_cls=Ia3Config,
        apply=apply_ia3,
        resolve=resolve,
        can_merge=True,
        peft_type="IA3",
        to_peft_config=to_peft_config,
        from_peft_config=from_peft_config,
        combine=combine_ia3,
        combinations=COMBINATION_NAMES,
    )
)
