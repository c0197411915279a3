"""The Python entry points: load a model (+ adapter), merge an adapter into a directory, describe."""
import logging
from pathlib import Path
from typing import Optional

from .config.errors import ConfigError
from .methods import adapter_configs, apply_method, get_method, merge_and_unload
from .methods.io import load_adapter, read_adapter_config
from .methods.registry import spec_for_peft_type
from .models import load_base_model
from .utils.modules import count_parameters

log = logging.getLogger(__name__)


def load_model(name_or_path: str = "default", adapter: Optional[str] = None, dtype: str = "float32"):
    """(model, tokenizer): a transformers causal LM (a torch module returning `.logits`), with the
    adapter in `adapter` (tunesmith or PEFT layout) applied when given."""
    model, tokenizer = load_base_model(name_or_path, dtype)
    if adapter:
        load_adapter(model, adapter)
    model.eval()
    return model, tokenizer


def merge_to_directory(model_name: str, adapter: str, output: str) -> Path:
    """Fold `adapter` into the base weights and save a plain transformers model + tokenizer."""
    spec = spec_for_peft_type(read_adapter_config(adapter).get("peft_type", ""))
    if not spec.can_merge:
        raise ConfigError(f"{spec.name} adapters cannot be merged into the weights; serve them with --adapter")
    model, tokenizer = load_model(model_name, adapter)
    merge_and_unload(model)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("merged %s into %s -> %s", adapter, model_name, out)
    return out


def describe(model_name: str, method_cfg=None, adapter: Optional[str] = None) -> dict:
    """Model class, architecture sizes and parameter counts (with a method or adapter applied)."""
    model, _ = load_base_model(model_name)
    _, total = count_parameters(model)
    if method_cfg is not None:
        apply_method(model, method_cfg)
    if adapter:
        load_adapter(model, adapter)
    trainable, with_adapters = count_parameters(model)
    cfg = model.config
    info = {"model": model_name, "class": type(model).__name__, "layers": getattr(cfg, "num_hidden_layers", "?"),
            "hidden size": getattr(cfg, "hidden_size", "?"), "vocab size": getattr(cfg, "vocab_size", "?"),
            "base parameters": f"{total:,}", "base weight bytes": f"{_weight_bytes(model):,}"}
    for name, mcfg in adapter_configs(model).items():
        info[f"adapter {name}"] = f"{mcfg.name} (mergeable: {get_method(mcfg.name).can_merge})"
    if adapter_configs(model):
        info["adapter parameters"] = f"{with_adapters - total:,}"
        info["trainable parameters"] = f"{trainable:,} ({100 * trainable / with_adapters:.3f}%)"
    return info


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
