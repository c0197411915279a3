"""tunesmith: adapt pretrained transformer language models (LoRA and more) on small machines."""

from .api import (
    describe,
    load_model,
    merge_to_directory,
    merge_to_quantized_directory,
    quantize_to_directory,
)
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelLoadError,
    TrainingError,
    TunesmithError,
    UnsupportedModuleError,
)
from .methods import apply_method, method_names
from .methods.io import load_adapter, save_adapter
from .tasks import load_config, task_names

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "TrainingError",
    "TunesmithError",
    "UnsupportedModuleError",
    "apply_method",
    "describe",
    "load_adapter",
    "load_config",
    "load_model",
    "merge_to_directory",
    "merge_to_quantized_directory",
    "method_names",
    "quantize_to_directory",
    "save_adapter",
    "task_names",
]
__version__ = "0.1.0"
