"""Quantize every nn.Linear of a model in place, and save/load the quantized model.

Notable:
- ``skip`` entries match a module name exactly, its last dotted component
  ("lm_head" skips "model.lm_head") or as an fnmatch pattern ("*.gate").
- A quantized model is saved as ONE safetensors file: its ordinary ``state_dict`` (the
  QuantizedLinear buffers included) plus a JSON ``tunesmith.quantization`` metadata entry
  giving each quantized layer's scheme, shape and block sizes. Loading builds the same
  architecture unquantized (cheap, e.g. from a config), swaps in QuantizedLinear modules
  built straight from the saved codes and scales (nothing is re-quantized), then loads the
  remaining weights. Tied weights (e.g. lm_head/embeddings) are handled by safetensors'
  ``save_model``/``load_model``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from tunesmith.config.errors import CheckpointError

from .linear import QuantizedLinear, check_scheme

log = logging.getLogger(__name__)

META_KEY = "tunesmith.quantization"


@dataclass
class QuantizationReport:
    """What ``quantize_model`` did."""

    num_layers: int = 0
    """Linear layers replaced by QuantizedLinear."""
    bytes_before: int = 0
    """Bytes of the replaced layers' weights and biases before quantization."""
    bytes_after: int = 0
    """Bytes of their codes, scales and biases after quantization."""
    skipped: list[str] = field(default_factory=list)
    """Names of linear layers left unquantized because they matched ``skip``."""


def quantize_model(model: nn.Module, scheme: str = "nf4", double_quant: bool | None = None,
                   skip: tuple[str, ...] = ("lm_head",), block_size: int = 64,
                   chunk_rows: int | None = None) -> QuantizationReport:
    """Replace every ``nn.Linear`` of ``model`` (except ``skip`` matches) in place.

    Args:
        model: any module; modified in place.
        scheme: "nf4" or "int8".
        double_quant: see ``QuantizedLinear.from_linear`` (None = the scheme's default).
        skip: module names or patterns to leave in full precision.
        block_size: weights per absmax/scale block.
        chunk_rows: see ``QuantizedLinear``.

    Raises:
        ConfigError: bad scheme, block size or double_quant combination.
    """
    check_scheme(scheme, double_quant)  # fail before touching any layer
    report = QuantizationReport()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        if _matches(name, skip):
            report.skipped.append(name)
            continue
        qlinear = QuantizedLinear.from_linear(linear, scheme, double_quant, block_size, chunk_rows)
        report.bytes_before += sum(p.numel() * p.element_size() for p in linear.parameters())
        report.bytes_after += qlinear.weight_bytes()
        report.num_layers += 1
        model.set_submodule(name, qlinear)
    log.info("quantized %d linear layers to %s: %d -> %d bytes (skipped: %s)",
             report.num_layers, scheme, report.bytes_before, report.bytes_after, report.skipped)
    return report


def quantization_specs(model: nn.Module) -> dict[str, dict]:
    """{module name: QuantizedLinear.spec()} for every quantized layer of ``model``."""
    return {n: m.spec() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def save_quantized(model: nn.Module, path: str | Path) -> None:
    """Save a quantized model's state (codes, scales, other weights) and layer specs."""
    metadata = {META_KEY: json.dumps(quantization_specs(model))}
    save_model(model, str(path), metadata=metadata)
    log.info("saved quantized model to %s", path)


def load_quantized(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a file written by ``save_quantized`` into the same, unquantized architecture.

    The linear layers listed in the file are replaced by QuantizedLinear modules built
    from the saved buffers; every other tensor is loaded as usual. Returns ``model``.

    Raises:
        CheckpointError: no quantization metadata, a listed layer is missing or not a
            Linear, or (with strict) the remaining keys do not match the model.
    """
    specs, tensors = _read_quantized_layers(path)
    for name, spec in specs.items():
        _check_target(model, name, path)
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.set_submodule(name, QuantizedLinear.from_tensors(own, spec))
    try:
        load_model(model, str(path), strict=strict)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model: {err}") from err
    log.info("loaded quantized model from %s (%d quantized layers)", path, len(specs))
    return model


def _read_quantized_layers(path) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """The layer specs and the tensors that belong to the quantized layers."""
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(META_KEY)
        if meta is None:
            raise CheckpointError(f"{path} has no '{META_KEY}' metadata; write it with "
                                  f"save_quantized()")
        specs = json.loads(meta)
        prefixes = tuple(n + "." for n in specs)
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    return specs, tensors


def _check_target(model: nn.Module, name: str, path) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise CheckpointError(f"{path} lists quantized layer {name!r}, which the model "
                              f"does not have") from err
    if not isinstance(module, (nn.Linear, QuantizedLinear)):
        raise CheckpointError(f"{path} lists quantized layer {name!r}, but the model has a "
                              f"{type(module).__name__} there, not an nn.Linear")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(name == p or last == p or fnmatch.fnmatchcase(name, p) for p in patterns)
