"""A quantized model directory: save once, load again without re-quantizing.

Layout (what ``load_base_model`` recognises by the marker file):

    DIR/config.json                    the transformers model config
    DIR/tokenizer*.json ...            the tokenizer
    DIR/model.quantized.safetensors    ``save_quantized`` output: codes, scales, other weights
    DIR/tunesmith_quantization.json    marker: {"scheme", "layers", "file", "format"}

Notable:
- Loading builds the architecture from config.json under transformers' ``no_init_weights``
  (no random init), so the full-precision linear weights are only allocated, never written:
  their pages are not touched before the quantized layers replace them, and peak memory stays
  close to the quantized size. The remaining weights (embeddings, norms) come from the file.
- The model is saved with whatever dtype its unquantized weights have; loading casts them to
  the requested dtype.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from tunesmith.errors import CheckpointError

from .model import load_quantized, quantization_specs, save_quantized

log = logging.getLogger(__name__)

MARKER = "tunesmith_quantization.json"
WEIGHTS = "model.quantized.safetensors"


def is_quantized_dir(path) -> bool:
    """Whether ``path`` is a directory written by ``save_pretrained_quantized``."""
    return (Path(path) / MARKER).is_file()


def read_marker(path) -> dict:
    """The marker of a quantized directory. Raises CheckpointError when unreadable."""
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{Path(path) / MARKER}: cannot read ({err}); rewrite the directory "
            f"with `tunesmith quantize`"
        ) from None


def save_pretrained_quantized(model, tokenizer, out_dir) -> Path:
    """Write a quantized model (see ``quantize_model``) and its tokenizer to ``out_dir``.

    Raises CheckpointError when the model holds no quantized layer.
    """
    specs = quantization_specs(model)
    if not specs:
        raise CheckpointError(
            "the model has no quantized layer to save; quantize it first "
            "(model.quantize=nf4 or int8)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    save_quantized(model, out / WEIGHTS)
    schemes = sorted({s["scheme"] for s in specs.values()})
    marker = {
        "format": 1,
        "scheme": schemes[0] if len(schemes) == 1 else schemes,
        "layers": len(specs),
        "file": WEIGHTS,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2))
    log.info("saved %d quantized layers (%s) to %s", len(specs), marker["scheme"], out)
    return out


def load_pretrained_quantized(path, torch_dtype: torch.dtype = torch.float32):
    """The quantized model saved in ``path`` (codes loaded as saved, nothing re-quantized).

    Raises CheckpointError when the directory or its weights do not fit together.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    marker = read_marker(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.tie_weights()  # no_init_weights also skips the tying done by init_weights
    load_quantized(model, Path(path) / marker.get("file", WEIGHTS))
    return model.eval()
