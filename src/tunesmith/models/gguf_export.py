"""Write a (merged) Llama-family model as a GGUF file for llama.cpp and Ollama.

The tensors come from the model; everything else (tokenizer vocabulary and merges, special
tokens, chat template, architecture settings) is copied from the GGUF file the base came from, so
the file says exactly what the original said about how to tokenize and prompt. Tensor names follow
gguf-py's own map (the one llama.cpp's converter uses); q and k projections get llama.cpp's row
permutation for its rotary layout (the inverse of what transformers applies when it reads GGUF).
Matrices are written as F16, F32 or Q8_0 (`--type`); 1-D tensors (norms) always as F32.
"""

from pathlib import Path

import numpy as np

from ..errors import ConfigError

TYPES = ("f16", "f32", "q8_0")
# Fields the writer sets itself, or that describe the source's own tensors.
_NOT_COPIED = ("GGUF.", "general.file_type", "general.quantization_version")


def export_gguf(model, source_gguf: Path, out: Path, tensor_type: str = "f16") -> dict:
    """Write `model`'s weights with `source_gguf`'s metadata to `out`; returns a summary."""
    import gguf

    if tensor_type not in TYPES:
        raise ConfigError(f"--type must be one of {', '.join(TYPES)}, got {tensor_type!r}")
    reader = gguf.GGUFReader(str(source_gguf))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama" or model.config.model_type != "llama":
        raise ConfigError(
            f"GGUF export writes Llama-family models; {source_gguf} is {arch!r} and the model is "
            f"{model.config.model_type!r}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    _copy_metadata(reader, writer)
    writer.add_file_type(_FILE_TYPES[tensor_type](gguf))
    tensors = _gguf_tensors(model, gguf)
    for name, array in tensors.items():
        _add_tensor(writer, gguf, name, array, tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)  # a file at `out` is always complete
    return {"path": str(out), "tensors": len(tensors), "bytes": out.stat().st_size}


_FILE_TYPES = {
    "f16": lambda gguf: gguf.LlamaFileType.MOSTLY_F16,
    "f32": lambda gguf: gguf.LlamaFileType.ALL_F32,
    "q8_0": lambda gguf: gguf.LlamaFileType.MOSTLY_Q8_0,
}


def _copy_metadata(reader, writer) -> None:
    for key, field in reader.fields.items():
        if key.startswith(_NOT_COPIED) or key == "general.architecture":
            continue
        main = field.types[0]
        sub = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)


def _gguf_tensors(model, gguf) -> dict[str, np.ndarray]:
    """{gguf name: fp32 array} of the model's weights, llama.cpp's layout."""
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base)
        if name is None:
            raise ConfigError(f"no GGUF name for the model's tensor {hf_name}")
        array = tensor.detach().float().cpu().numpy()
        if base.endswith("self_attn.q_proj"):
            array = _permute(array, cfg.num_attention_heads, cfg.num_attention_heads)
        elif base.endswith("self_attn.k_proj"):
            array = _permute(array, cfg.num_attention_heads, cfg.num_key_value_heads)
        tensors[f"{name}.{suffix}"] = array
    return tensors


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _add_tensor(writer, gguf, name: str, array: np.ndarray, tensor_type: str) -> None:
    if array.ndim == 1 or tensor_type == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif tensor_type == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        kind = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)


def merged_model_for_export(model_name: str, adapter=None):
    """The base (float32) with `adapter` merged in, and the GGUF file its metadata comes from."""
    from ..methods import merge_and_unload
    from ..methods.io import load_adapter
    from .loading import embedded_gguf_path, load_base_model

    if model_name == "default":
        source = embedded_gguf_path()
    elif model_name.endswith(".gguf"):
        source = Path(model_name)
    else:
        raise ConfigError(
            f"--gguf needs the base's own GGUF file for the tokenizer metadata; --model "
            f"{model_name!r} is not one (use --model default or --model FILE.gguf)"
        )
    model, _ = load_base_model(model_name, "float32")
    if adapter:
        load_adapter(model, adapter)
        model = merge_and_unload(model)
    return model.eval(), source
