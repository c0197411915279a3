"""`tunesmith export`: write a model (+ merged adapter) for other runtimes (GGUF for llama.cpp)."""


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
