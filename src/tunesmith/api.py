"""The Python entry points: load a model (+ adapter), merge an adapter into a directory, quantize a
model into a directory, describe."""

import logging
from pathlib import Path
from typing import Optional

from .errors import ConfigError
from .methods import adapter_configs, apply_method, get_method, merge_adapters, merge_and_unload
from .methods.io import load_adapter, read_adapter_config
from .methods.registry import spec_for_peft_type
from .models import load_base_model
from .models.quantization import (
    dequantize_model,
    quantize_model,
    requantization_error,
    save_pretrained_quantized,
)
from .utils.modules import count_parameters, quantization_schemes, weight_bytes
from .utils.paths import ensure_output_dir

log = logging.getLogger(__name__)


def load_model(
    name_or_path: str = "default",
    adapter: Optional[str] = None,
    dtype: str = "float32",
    quantize: str = "none",
    quant_block_size: int = 64,
):
    """(model, tokenizer): a transformers causal LM (a torch module returning `.logits`), with the
    adapter in `adapter` (tunesmith or PEFT layout) applied when given. A list of several adapter
    directories stacks them: all active at once, named adapter_0, adapter_1, ... (see
    docs/methods/composition.md for which stacks are well defined).

    quantize: "none", "nf4" or "int8" quantizes the base's linear layers first (QLoRA adapters were
    trained on that); a directory written by `quantize_to_directory` loads quantized as saved.
    """
    model, tokenizer = load_base_model(name_or_path, dtype, quantize, quant_block_size)
    if isinstance(adapter, (list, tuple)) and len(adapter) > 1:
        _stack_adapters(model, list(adapter))
    elif adapter:
        load_adapter(model, adapter if isinstance(adapter, str) else adapter[0])
    model.eval()
    return model, tokenizer


def _stack_adapters(model, adapters: list) -> None:
    from .methods import set_active_adapters

    names = [f"adapter_{i}" for i in range(len(adapters))]
    for name, path in zip(names, adapters):
        load_adapter(model, path, name)
    set_active_adapters(model, names)
    log.info("stacked %d adapters, all active: %s", len(adapters), ", ".join(adapters))


def merge_to_directory(model_name: str, adapter: str, output: str, quantize: str = "none") -> Path:
    """Fold `adapter` into the base weights and save a plain transformers model + tokenizer: a
    causal LM, or the layout the adapter's task asks for (a reward run: a sequence-classification
    model with its reward head as `score`).

    With `quantize` (or a quantized model directory) the adapter is merged into the dequantized
    base it was trained on (QLoRA), and everything is saved in full precision (float32).
    """
    from .tasks import merge_export_for

    _check_mergeable(adapter)
    out = ensure_output_dir(output, "output")  # before the slow load: fail fast on a bad path
    model, tokenizer = load_model(model_name, adapter, quantize=quantize)
    merge_and_unload(model)
    dequantize_model(model)  # layers the adapter did not touch
    export = merge_export_for(adapter)  # a task's own layout (reward run: sequence classifier)
    if export is not None:
        export(model, tokenizer, out)
    else:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    log.info("merged %s into %s -> %s", adapter, model_name, out)
    return out


def combine_to_directory(
    model_name: str,
    adapters: list,
    weights: list,
    output: str,
    opts=None,
    into_base: bool = False,
    quantize: str = "none",
) -> Path:
    """Combine saved adapters (methods/combine.py: linear, cat, svd, ties, dare_*, ...) and save
    the result: a PEFT-layout adapter in `output`, or with `into_base` the base model with it
    merged in (a plain transformers directory). opts is a CombineOptions.

    Raises ConfigError when the adapters name different base models or cannot be combined,
    CheckpointError when one does not fit model_name.
    """
    from .methods.combine import combine_adapters
    from .methods.io import save_adapter

    bases = {a: read_adapter_config(a).get("base_model_name_or_path") for a in adapters}
    if len({b for b in bases.values() if b}) > 1:
        listed = "; ".join(f"{a}: {b}" for a, b in bases.items())
        raise ConfigError(
            f"the adapters were trained on different base models ({listed}); combine adapters "
            f"of one base only"
        )
    out = ensure_output_dir(output, "output")
    model, tokenizer = load_base_model(model_name, "float32", quantize)
    names = [f"source_{i}" for i in range(len(adapters))]
    for name, adapter in zip(names, adapters):
        load_adapter(model, adapter, name)
    combine_adapters(model, names, weights, "combined", opts)
    if not into_base:
        save_adapter(model, out, "combined", base_model=model_name)
        log.info("combined %s -> adapter %s", ", ".join(adapters), out)
        return out
    if not get_method(adapter_configs(model)["combined"].name).can_merge:
        raise ConfigError("the combined adapter's method cannot be merged into the weights")
    merge_and_unload(model)  # the combined adapter is the active one
    dequantize_model(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("combined %s and merged into %s -> %s", ", ".join(adapters), model_name, out)
    return out


def merge_to_quantized_directory(
    model_name: str, adapter: str, output: str, quantize: str = "none"
):
    """(directory, error): fold `adapter` into a quantized base, re-quantize the merged layers and save
    a quantized model directory (loadable as model.name). error is `requantization_error`: what
    re-quantizing the merged weights changed ({"layers", "max_abs", "relative"}).

    Raises ConfigError when the base is not quantized (give quantize or a quantized directory).
    """
    from .tasks import merge_export_for

    _check_mergeable(adapter)
    if merge_export_for(adapter) is not None:
        raise ConfigError(
            f"{adapter} merges into its task's own model layout, which is written in full "
            f"precision only; drop --keep-quantized"
        )
    ensure_output_dir(output, "output")
    model, tokenizer = load_model(model_name, adapter, quantize=quantize)
    if not quantization_schemes(model):
        raise ConfigError(
            f"{model_name} is not quantized, so there is nothing to re-quantize; give "
            f"--quantize nf4/int8, or merge in full precision without --keep-quantized"
        )
    merge_adapters(model)
    error = requantization_error(model)
    merge_and_unload(model)  # merged in place: the quantized layers stay
    out = save_pretrained_quantized(model, tokenizer, output)
    log.info(
        "merged %s into %s -> %s (re-quantization error: max %.3g, relative %.3g)",
        adapter,
        model_name,
        out,
        error["max_abs"],
        error["relative"],
    )
    return out, error


def merged_model_class(path) -> str:
    """The transformers Auto class that loads the merged directory `path`."""
    import json

    architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "AutoModelForSequenceClassification"
    return "AutoModelForCausalLM"


def quantize_to_directory(
    model_name: str, scheme: str, output: str, block_size: int = 64, dtype: str = "float32"
) -> dict:
    """Quantize a base model's linear layers (not lm_head) and save a directory that load_model /
    model.name load without re-quantizing. Returns {"path", "layers", "bytes_before", "bytes_after"}
    (bytes of the quantized layers' weights before and after)."""
    ensure_output_dir(output, "output")
    model, tokenizer = load_base_model(model_name, dtype)
    report = quantize_model(model, scheme, block_size=block_size)
    path = save_pretrained_quantized(model, tokenizer, output)
    return {
        "path": path,
        "layers": report.num_layers,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
    }


def describe(
    model_name: str,
    method_cfg=None,
    adapter: Optional[str] = None,
    quantize: str = "none",
    quant_block_size: int = 64,
) -> dict:
    """Model class, architecture sizes, parameter counts (with a method or adapter applied), the bytes
    the base weights hold and the quantization in use."""
    model, _ = load_base_model(model_name, quantize=quantize, quant_block_size=quant_block_size)
    _, total = count_parameters(model)
    base_bytes = weight_bytes(model)
    if method_cfg is not None:
        apply_method(model, method_cfg)
    if adapter:
        load_adapter(model, adapter)
    trainable, with_adapters = count_parameters(model)
    cfg = model.config
    info = {
        "model": model_name,
        "class": type(model).__name__,
        "layers": getattr(cfg, "num_hidden_layers", "?"),
        "hidden size": getattr(cfg, "hidden_size", "?"),
        "vocab size": getattr(cfg, "vocab_size", "?"),
        "base parameters": f"{total:,}",
        "base weight bytes": f"{base_bytes:,} ({base_bytes / max(4 * total, 1):.3f}x of float32)",
        "quantization": _quantization_text(model),
    }
    for name, mcfg in adapter_configs(model).items():
        info[f"adapter {name}"] = f"{mcfg.name} (mergeable: {get_method(mcfg.name).can_merge})"
    if adapter_configs(model):
        info["adapter parameters"] = f"{with_adapters - total:,}"
        info["trainable parameters"] = f"{trainable:,} ({100 * trainable / with_adapters:.3f}%)"
    return info


def _check_mergeable(adapter: str) -> None:
    spec = spec_for_peft_type(read_adapter_config(adapter).get("peft_type", ""))
    if not spec.can_merge:
        raise ConfigError(
            f"{spec.name} adapters cannot be merged into the weights; serve them with --adapter"
        )


def _quantization_text(model) -> str:
    schemes = quantization_schemes(model)
    if not schemes:
        return "none"
    kinds = ", ".join(f"{k} ({n} linear layers)" for k, n in schemes.items())
    return f"{kinds}; other weights {next(model.parameters()).dtype}".replace("torch.", "")
