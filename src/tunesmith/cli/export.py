"""The commands that write a model: `merge` (adapter into the base), `quantize` (nf4/int8
directory) and `export` (GGUF for llama.cpp and Ollama)."""


def cmd_export(args) -> int:
    from ..models.gguf_export import export_gguf, merged_model_for_export

    model, source = merged_model_for_export(args.model, args.adapter)
    result = export_gguf(model, source, args.gguf, args.type)
    print(
        f"wrote {result['path']} ({result['tensors']} tensors, {result['bytes'] / 1e6:.0f} MB, "
        f"{args.type}; tokenizer and chat template from {source.name})"
    )
    return 0


def export_args(p) -> None:
    from ..models.gguf_export import TYPES

    p.add_argument("--model", default="default", help="base: default or a .gguf file")
    p.add_argument("--adapter", help="adapter directory to merge in first")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--type", default="f16", choices=TYPES, help="matrix tensor type (default f16)")


def cmd_merge(args) -> int:
    from ..api import merge_to_directory, merge_to_quantized_directory, merged_model_class

    if args.keep_quantized:
        path, err = merge_to_quantized_directory(
            args.model, args.adapter, args.output, args.quantize
        )
        print(
            f"merged and re-quantized model written to {path} (load it with --model {path}); re-quantizing "
            f"{err['layers']} layers changed their weights by at most {err['max_abs']:.3g} "
            f"(relative Frobenius error {err['relative']:.3g})"
        )
        return 0
    path = merge_to_directory(args.model, args.adapter, args.output, args.quantize)
    print(
        f"merged model written to {path} (load it with transformers."
        f"{merged_model_class(path)}.from_pretrained)"
    )
    return 0


def merge_args(p):
    p.add_argument("--model", default="default", help="base model")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--output", required=True, help="directory for the merged transformers model")
    quantize_arg(
        p,
        "quantize the base as in training (QLoRA) before merging; the result is float32 "
        "unless --keep-quantized",
    )
    p.add_argument(
        "--keep-quantized",
        action="store_true",
        help="re-quantize the merged layers and write a quantized model directory, reporting the error",
    )


def quantize_arg(p, help_text: str) -> None:
    p.add_argument("--quantize", choices=["none", "nf4", "int8"], default="none", help=help_text)


def cmd_quantize(args) -> int:
    from ..api import quantize_to_directory

    result = quantize_to_directory(args.model, args.scheme, args.output, args.block_size)
    print(
        f"quantized {result['layers']} linear layers to {args.scheme}: {result['bytes_before']:,} -> "
        f"{result['bytes_after']:,} bytes; written to {result['path']} (use it as --model or model.name)"
    )
    return 0


def quantize_args(p):
    p.add_argument("--model", default="default", help="base model to quantize")
    p.add_argument(
        "--scheme",
        choices=["nf4", "int8"],
        default="nf4",
        help="nf4 (with double quantization) or int8",
    )
    p.add_argument(
        "--block-size", type=int, default=64, help="weights per absmax scale (even; 64 as in QLoRA)"
    )
    p.add_argument("--output", required=True, help="directory for the quantized model")
