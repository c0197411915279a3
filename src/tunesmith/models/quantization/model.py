"""Quantize every nn.Linear of a model in place, and save/load the quantized model.

Notable:
- ``skip`` entries match a module name exactly, its last dotted component
  ("lm_head" skips "model.lm_head") or as an fnmatch pattern ("*.gate").
- A quantized model is saved as ONE safetensors file: its ordinary ``state_dict`` (the
  QuantizedLinear buffers included) plus a JSON ``tunesmith.quantization`` metadata entry
  giving each quantized layer's scheme, shape and block sizes. Loading builds the same
  architecture unquantized (cheap, e.g. from a config), swaps in QuantizedLinear modules
  built straight from the saved codes and scales (nothing is re-quantized), then loads the
  remaining weights. Saving drops tied duplicates (safetensors' ``save_model``).
- Loading reads every tensor of the file once and ASSIGNS it to the model (no copy into the
  model's own tensors, which are dropped untouched), then re-ties tensors the model shared
  (e.g. lm_head/embeddings). So the peak memory of a load is about the file size on top of
  an architecture built without initialising its weights.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from tunesmith.errors import CheckpointError

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


def quantize_model(
    model: nn.Module,
    scheme: str = "nf4",
    double_quant: bool | None = None,
    skip: tuple[str, ...] = ("lm_head",),
    block_size: int = 64,
    chunk_rows: int | None = None,
) -> QuantizationReport:
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
    log.info(
        "quantized %d linear layers to %s: %d -> %d bytes (skipped: %s)",
        report.num_layers,
        scheme,
        report.bytes_before,
        report.bytes_after,
        report.skipped,
    )
    return report


def dequantize_model(model: nn.Module) -> int:
    """Replace every QuantizedLinear of ``model`` by an fp32 nn.Linear holding its dequantized
    weight, in place; returns how many layers were replaced."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    for name, qlinear in targets:
        model.set_submodule(name, qlinear.to_linear())
    return len(targets)


def requantization_error(model: nn.Module) -> dict:
    """The error the last ``set_weight`` (e.g. merging an adapter) introduced, over all layers.

    Returns {"layers": n, "max_abs": largest |W_requantized - W_intended|, "relative":
    ||W_requantized - W_intended||_F / ||W_intended||_F over the n layers}; n = 0 (and zeros)
    when no quantized layer was re-quantized.
    """
    stats = [
        m.last_requantization_error
        for m in model.modules()
        if isinstance(m, QuantizedLinear) and hasattr(m, "last_requantization_error")
    ]
    err_sq, ref_sq = sum(s["err_sq"] for s in stats), sum(s["ref_sq"] for s in stats)
    return {
        "layers": len(stats),
        "max_abs": max((s["max_abs"] for s in stats), default=0.0),
        "relative": (err_sq / ref_sq) ** 0.5 if ref_sq > 0 else 0.0,
    }


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
    specs, tensors = _read_file(path)
    for name, spec in specs.items():
        _check_target(model, name, path)
        prefix = name + "."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.set_submodule(name, QuantizedLinear.from_tensors(own, spec))
    _assign(model, tensors, path, strict)
    log.info("loaded quantized model from %s (%d quantized layers)", path, len(specs))
    return model


def _read_file(path) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """The layer specs and every tensor of the file."""
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(META_KEY)
        if meta is None:
            raise CheckpointError(
                f"{path} has no '{META_KEY}' metadata; write it with save_quantized()"
            )
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta), tensors


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor], path, strict: bool) -> None:
    """Assign the file's tensors to the model (cast to the model's float dtypes), then re-tie."""
    groups = _shared_names(model)
    current = model.state_dict(keep_vars=True)
    state = {
        k: v.to(current[k].dtype) if k in current and current[k].is_floating_point() else v
        for k, v in tensors.items()
    }
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not any(o in state for o in groups.get(k, ()))]
    if strict and (missing or result.unexpected_keys):
        raise CheckpointError(
            f"{path} does not fit the model: missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}"
        )
    for name, others in groups.items():
        if name in state:
            for other in others:
                owner, _, attr = other.rpartition(".")
                setattr(model.get_submodule(owner), attr, model.get_parameter(name))


def _shared_names(model: nn.Module) -> dict[str, list[str]]:
    """{parameter name: the other names of the same tensor} for tied parameters."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {
        n: [o for o in names if o != n] for names in by_id.values() if len(names) > 1 for n in names
    }


def _check_target(model: nn.Module, name: str, path) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise CheckpointError(
            f"{path} lists quantized layer {name!r}, which the model does not have"
        ) from err
    if not isinstance(module, (nn.Linear, QuantizedLinear)):
        raise CheckpointError(
            f"{path} lists quantized layer {name!r}, but the model has a "
            f"{type(module).__name__} there, not an nn.Linear"
        )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(name == p or last == p or fnmatch.fnmatchcase(name, p) for p in patterns)
