"""One function per subcommand, plus its argument definitions. No training logic lives here."""
import argparse
import dataclasses
import json
import sys

from ..config.errors import ConfigError
from ..config.loader import load_config
from ..config.schema import SECTIONS
from ..methods import config_classes, get_method, method_names
from . import report


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config with sections model, method, data, train, eval, output")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 method.r=16")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_keys_help()


def config_keys_help() -> str:
    lines = ["config keys:"]
    sections = dict(SECTIONS)
    sections.update({f"method ({name})": cls for name, cls in config_classes().items()})
    for section, cls in sections.items():
        prefix = section.split(" ")[0]
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}"
            lines.append(f"  {key:<24} {f.metadata.get('help', '')}  [default: {_default(f)}]")
    return "\n".join(lines)


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _load(args):
    return load_config(args.config, args.overrides, config_classes())


def cmd_train(args) -> int:
    from ..recipes import sft

    cfg = _load(args)
    metrics = sft.run(cfg, progress=sys.stderr.isatty() or args.progress)
    report.print_metrics(metrics, f"trained; adapter in {cfg.output.dir}")
    return 0


def _train_args(p):
    _config_args(p)
    p.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")


def cmd_eval(args) -> int:
    from ..recipes import evaluate

    cfg = _load(args)
    if args.base and args.adapter:
        raise ConfigError("--base scores the model without an adapter; drop --adapter or --base")
    metrics = evaluate.run(cfg, adapter=args.adapter, split=args.split, base_only=args.base)
    report.print_samples(metrics.pop("samples"), cfg.eval.show)
    report.print_metrics(metrics, f"metrics written to {cfg.output.dir}/metrics.json")
    return 0


def _eval_args(p):
    _config_args(p)
    p.add_argument("--adapter", help="adapter directory (default: output.dir when it holds one)")
    p.add_argument("--split", choices=["test", "eval", "train"], default="test", help="data split to score")
    p.add_argument("--base", action="store_true", help="score the base model without any adapter")


def cmd_generate(args) -> int:
    from ..evaluation import generate
    from ..api import load_model

    prompts = [args.prompt] if args.prompt else [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("no prompt: give one as an argument or on stdin (one per line)")
    model, tokenizer = load_model(args.model, adapter=args.adapter)
    inputs = prompts if args.raw else [[{"role": "user", "content": p}] for p in prompts]
    outputs = generate(model, tokenizer, inputs, args.max_new_tokens, args.sample, args.temperature, args.top_p)
    for text in outputs:
        print(text.strip())
    return 0


def _generate_args(p):
    p.add_argument("prompt", nargs="?", help="prompt text (default: read prompts from stdin, one per line)")
    p.add_argument("--model", default="default", help="base model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="adapter directory to apply")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")


def cmd_merge(args) -> int:
    from ..api import merge_to_directory

    path = merge_to_directory(args.model, args.adapter, args.output)
    print(f"merged model written to {path} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _merge_args(p):
    p.add_argument("--model", default="default", help="base model")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--output", required=True, help="directory for the merged transformers model")


def cmd_info(args) -> int:
    from ..api import describe

    if args.config:
        cfg = _load(args)
        info = describe(cfg.model.name, method_cfg=cfg.method, adapter=args.adapter)
    else:
        info = describe(args.model, adapter=args.adapter)
    for key, value in info.items():
        print(f"{key:<22} {value}")
    return 0


def _info_args(p):
    p.add_argument("config", nargs="?", help="optional config: report the counts with its method applied")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the config")
    p.add_argument("--model", default="default", help="base model when no config is given")
    p.add_argument("--adapter", help="adapter directory to apply")


def cmd_methods(args) -> int:
    for name in method_names():
        print(name)
    return 0


def cmd_quickstart(args) -> int:
    from ..recipes import quickstart

    result = quickstart.run(args.config, args.overrides, progress=True)
    report.print_quickstart(result)
    return 0


def _quickstart_args(p):
    p.add_argument("--config", help="quick-start config (default: the built-in one, also in examples/quickstart.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=40")


def cmd_compare(args) -> int:
    from ..recipes import compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods is empty; give names from `tunesmith methods`, e.g. lora,ia3")
    out = args.output or str(_load(args).output.dir) + "/compare"
    rows = compare.run(args.config, methods, args.overrides, out, args.metric)
    print(compare.markdown_table(rows))
    print(f"table, CSV and plot written to {out}")
    return 0


def _compare_args(p):
    _config_args(p)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. lora,ia3,adapter")
    p.add_argument("--metric", default="exact_match", help="metrics.json key to tabulate (e.g. test_loss)")
    p.add_argument("--output", help="report directory (default: <output.dir>/compare)")


COMMANDS = {
    "train": (cmd_train, _train_args, "fine-tune: tunesmith train CONFIG.yaml [key.sub=value ...]"),
    "eval": (cmd_eval, _eval_args, "score a model (+ adapter) on the config's held-out data"),
    "generate": (cmd_generate, _generate_args, "generate text from a prompt (argument or stdin)"),
    "merge": (cmd_merge, _merge_args, "merge an adapter into the base and save a transformers directory"),
    "info": (cmd_info, _info_args, "model, parameter counts and trainable counts"),
    "methods": (cmd_methods, lambda p: None, "list the registered fine-tuning methods"),
    "compare": (cmd_compare, _compare_args, "train several methods on one task and tabulate the results"),
    "quickstart": (cmd_quickstart, _quickstart_args, "fine-tune the embedded model on the built-in task, before/after"),
}
