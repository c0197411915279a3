"""Fine-tuning methods. Importing this package registers every method folder."""

from . import (
    adalora,  # noqa: F401  (registers "adalora")
    adapter,  # noqa: F401  (registers "adapter")
    bitfit,  # noqa: F401  (registers "bitfit")
    boft,  # noqa: F401  (registers "boft")
    fourierft,  # noqa: F401  (registers "fourierft")
    full,  # noqa: F401  (registers "full")
    ia3,  # noqa: F401  (registers "ia3")
    llama_adapter,  # noqa: F401  (registers "llama_adapter")
    ln_tuning,  # noqa: F401  (registers "ln_tuning")
    loha,  # noqa: F401  (registers "loha")
    lokr,  # noqa: F401  (registers "lokr")
    lora,  # noqa: F401  (registers "lora")
    multitask_prompt_tuning,  # noqa: F401  (registers "multitask_prompt_tuning")
    oft,  # noqa: F401  (registers "oft")
    p_tuning,  # noqa: F401  (registers "p_tuning")
    prefix_tuning,  # noqa: F401  (registers "prefix_tuning")
    prompt_tuning,  # noqa: F401  (registers "prompt_tuning")
    selected,  # noqa: F401  (registers "selected")
    sparse,  # noqa: F401  (registers "sparse")
    vera,  # noqa: F401  (registers "vera")
)
from .base import (
    AdapterLayer,
    MethodSpec,
    adapter_configs,
    disabled_adapters,
    inject_adapter,
    merge_adapters,
    merge_and_unload,
    set_active_adapter,
    set_active_adapters,
    unmerge_adapters,
)
from .registry import (
    check_quantized_base,
    config_classes,
    get_method,
    method_names,
    register_method,
)

__all__ = [
    "AdapterLayer",
    "MethodSpec",
    "adapter_configs",
    "apply_method",
    "config_classes",
    "disabled_adapters",
    "get_method",
    "merge_adapters",
    "merge_and_unload",
    "method_names",
    "register_method",
    "set_active_adapter",
    "set_active_adapters",
    "unmerge_adapters",
]


def apply_method(model, cfg, adapter_name: str = "default"):
    """Add adapter `adapter_name` of the method named by cfg.name to model (in place); return model.

    base.inject_adapter runs the method's own part (resolve cfg, wrap or create the modules), then make the new adapter active on every layer that holds it, record its
    config and train its parameters only (base.py's docstring has the contract).
    Raises ConfigError when the model is quantized and the method does not support that.
    """
    spec = get_method(cfg.name)
    check_quantized_base(model, spec)
    return inject_adapter(model, spec, cfg, adapter_name)
