"""The commands that write a model: `merge` (adapter into the base, or several adapters
combined), `quantize` (nf4/int8 directory) and `export` (GGUF for llama.cpp and Ollama)."""

from ..errors import ConfigError


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

    if len(args.adapter) > 1 or args.weights is not None:
        return _cmd_combine(args)
    args.adapter = args.adapter[0]
    if args.into_base or _combine_flags(args):
        raise ConfigError(
            f"{', '.join(['--into-base'] * args.into_base + _combine_flags(args))} combine several "
            f"adapters: give two or more --adapter and --weights (one adapter is merged into the "
            f"base as it is)"
        )
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


def _combine_flags(args) -> list:
    flags = ("combination", "density", "svd_rank", "svd_clamp", "majority_sign", "seed")
    return [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f) is not None]


def _cmd_combine(args) -> int:
    from ..api import combine_to_directory
    from ..methods.combine import CombineOptions

    if args.weights is None:
        raise ConfigError(
            f"{len(args.adapter)} adapters need --weights, one per adapter "
            f"(e.g. --weights {','.join(['0.5'] * len(args.adapter))})"
        )
    if args.keep_quantized:
        raise ConfigError("--keep-quantized merges one adapter; combined adapters merge in fp32")
    given = {k: getattr(args, k) for k in ("density", "svd_rank", "svd_clamp", "majority_sign")}
    opts = CombineOptions(
        combination=args.combination or "svd",
        seed=args.seed if args.seed is not None else 0,
        **{k: v for k, v in given.items() if v is not None},
    )
    path = combine_to_directory(
        args.model,
        args.adapter,
        _weights(args.weights),
        args.output,
        opts,
        args.into_base,
        args.quantize,
    )
    what = "model with the combined adapter merged in" if args.into_base else "combined adapter"
    print(f"{opts.combination} {what} written to {path}")
    return 0


def _weights(text: str) -> list:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--weights must be numbers separated by commas (e.g. 0.7,0.3), got {text!r}"
        ) from None


def merge_args(p):
    from ..methods.combine import COMBINATIONS, SIGN_METHODS

    p.add_argument("--model", default="default", help="base model")
    p.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="adapter directory; repeat it to combine several adapters (with --weights)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="directory for the merged transformers model (several adapters: for the combined "
        "adapter, unless --into-base)",
    )
    p.add_argument("--weights", help="one weight per --adapter, comma-separated, e.g. 0.7,0.3")
    p.add_argument(
        "--combination",
        choices=list(COMBINATIONS),
        help="how several adapters combine (default svd; docs/methods/composition.md)",
    )
    p.add_argument(
        "--density", type=float, help="fraction kept by ties/dare/magnitude_prune, in (0, 1]"
    )
    p.add_argument(
        "--svd-rank", type=int, help="rank of an svd result (default: the largest input rank)"
    )
    p.add_argument("--svd-clamp", type=float, help="quantile at which svd factors are clamped")
    p.add_argument(
        "--majority-sign", choices=SIGN_METHODS, help="TIES sign election (default total)"
    )
    p.add_argument("--seed", type=int, help="seed of DARE's random drop masks (default 0)")
    p.add_argument(
        "--into-base",
        action="store_true",
        help="merge the combined adapter into the base and write a transformers directory",
    )
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
