"""Fine-tuning methods. Importing this package registers every method folder."""
from . import lora  # noqa: F401  (registers "lora")
from .base import (AdapterLayer, MethodSpec, adapter_configs, disabled_adapters, merge_adapters,
                   merge_and_unload, set_active_adapter, unmerge_adapters)
from .registry import config_classes, get_method, method_names, register_method

__all__ = ["AdapterLayer", "MethodSpec", "adapter_configs", "apply_method", "config_classes",
           "disabled_adapters", "get_method", "merge_adapters", "merge_and_unload", "method_names",
           "register_method", "set_active_adapter", "unmerge_adapters"]


def apply_method(model, cfg, adapter_name: str = "default"):
    """Apply the method named by cfg.name to model (in place) and return the model."""
    return get_method(cfg.name).apply(model, cfg, adapter_name)
