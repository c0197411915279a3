"""One function per subcommand, plus its argument definitions. No training logic lives here."""

import argparse
import sys

from ..errors import ConfigError
from ..methods import method_names
from ..tasks import EvalRequest, get_task, load_config, task_names
from ..training.distributed import distributed_run
from ..utils.distributed import is_main_process
from . import launch, report
from .export import (
    cmd_export,
    cmd_merge,
    cmd_quantize,
    export_args,
    merge_args,
    quantize_arg,
    quantize_args,
)
from .keys_help import config_keys_help


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", help="YAML config with sections model, method, data, train, eval, output"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 method.r=16")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_keys_help()


def _load(args):
    return load_config(args.config, args.overrides)


def cmd_train(args) -> int:
    if launch.wants_launch(args):
        _load(args)  # a bad config fails here once, not on every rank
        return launch.launch(args)
    cfg = _load(args)
    with distributed_run(cfg.train.distributed):
        metrics = get_task(cfg.task.type).train(cfg, sys.stderr.isatty() or args.progress)
    if is_main_process():
        _print_task_metrics(cfg, metrics, f"trained; outputs in {cfg.output.dir}")
    return 0


def _train_args(p):
    _config_args(p)
    p.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not on a terminal"
    )
    launch.add_launch_args(p)


def cmd_eval(args) -> int:
    cfg = _load(args)
    metrics = get_task(cfg.task.type).evaluate(
        cfg, EvalRequest(args.split, args.adapter, args.base)
    )
    _print_task_metrics(cfg, metrics, f"metrics written to {cfg.output.dir}/metrics.json")
    return 0


def _print_task_metrics(cfg, metrics: dict, footer: str) -> None:
    if "samples" in metrics:
        metrics = {**metrics, "samples": metrics["samples"][: cfg.eval.show]}
    print(get_task(cfg.task.type).text(metrics))
    print(footer)


def cmd_classify(args) -> int:
    from ..recipes import classify

    texts = (
        [args.text]
        if args.text
        else [line for line in sys.stdin.read().splitlines() if line.strip()]
    )
    if not texts:
        raise ConfigError("no text: give one as an argument or on stdin (one per line)")
    run_dir = _load(args).output.dir if args.config else args.run
    for label, prob in classify.classify_texts(run_dir, texts):
        print(f"{label}\t{prob:.4f}")
    return 0


def _classify_args(p):
    p.add_argument(
        "text", nargs="?", help="text to classify (default: read texts from stdin, one per line)"
    )
    p.add_argument(
        "--run", default="runs/default", help="output.dir of a classification training run"
    )
    p.add_argument("--config", help="the training config instead of --run (its output.dir is used)")
    p.set_defaults(overrides=[])


def cmd_table(args) -> int:
    from ..recipes import table

    rows = table.run(args.spec, args.overrides, force=args.force, progress=sys.stderr.isatty())
    spec = table.read_spec(args.spec)
    print(table.markdown(rows, spec["columns"]))
    print(f"table written to {spec['output']}/table.md (.csv, .json)")
    return 0


def _table_args(p):
    p.add_argument(
        "spec",
        help="table spec YAML: base config, rows of overrides, columns, output (see examples/)",
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides applied to every row, e.g. model.name=..."
    )
    p.add_argument("--force", action="store_true", help="rerun rows that already have results")


def _eval_args(p):
    _config_args(p)
    p.add_argument("--adapter", help="adapter directory (default: output.dir when it holds one)")
    p.add_argument(
        "--split", choices=["test", "eval", "train"], default="test", help="data split to score"
    )
    p.add_argument("--base", action="store_true", help="score the base model without any adapter")


def cmd_generate(args) -> int:
    from ..api import load_model
    from ..evaluation import generate

    prompts = (
        [args.prompt]
        if args.prompt
        else [line for line in sys.stdin.read().splitlines() if line.strip()]
    )
    if not prompts:
        raise ConfigError("no prompt: give one as an argument or on stdin (one per line)")
    model, tokenizer = load_model(args.model, adapter=args.adapter, quantize=args.quantize)
    inputs = prompts if args.raw else [[{"role": "user", "content": p}] for p in prompts]
    outputs = generate(
        model, tokenizer, inputs, args.max_new_tokens, args.sample, args.temperature, args.top_p
    )
    for text in outputs:
        print(text.strip())
    return 0


def _generate_args(p):
    p.add_argument(
        "prompt", nargs="?", help="prompt text (default: read prompts from stdin, one per line)"
    )
    p.add_argument(
        "--model",
        default="default",
        help="base model (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        help="adapter directory to apply; repeat it to stack adapters of different methods "
        "(e.g. prompt tuning + LoRA), all active at once",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument(
        "--raw", action="store_true", help="use the prompt as is, without the chat template"
    )
    quantize_arg(p, "quantize the base's linear layers first (as for a QLoRA adapter)")


def cmd_info(args) -> int:
    from ..api import describe

    if args.config:
        cfg = _load(args)
        if args.quantize != "none" and cfg.model.quantize not in ("none", args.quantize):
            raise ConfigError(
                f"--quantize {args.quantize} contradicts model.quantize={cfg.model.quantize} in "
                f"{args.config}; drop one of them"
            )
        quantize = cfg.model.quantize if args.quantize == "none" else args.quantize
        info = describe(
            cfg.model.name,
            method_cfg=cfg.method,
            adapter=args.adapter,
            quantize=quantize,
            quant_block_size=cfg.model.quant_block_size,
        )
    else:
        info = describe(args.model, adapter=args.adapter, quantize=args.quantize)
    for key, value in info.items():
        print(f"{key:<22} {value}")
    return 0


def _info_args(p):
    p.add_argument(
        "config", nargs="?", help="optional config: report the counts with its method applied"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides for the config")
    p.add_argument("--model", default="default", help="base model when no config is given")
    p.add_argument("--adapter", help="adapter directory to apply")
    quantize_arg(
        p, "quantize the base's linear layers (default: none, or model.quantize of the config)"
    )


def cmd_score(args) -> int:
    from ..recipes.reward import load_reward_scorer

    if args.adapter:
        scorer = load_reward_scorer(args.adapter, args.model)
    elif args.model:
        scorer = load_reward_scorer(args.model)
    else:
        raise ConfigError(
            "no reward model: give --adapter (a reward run's output.dir) or --model (a reward "
            "run's output.dir or a sequence-classification directory)"
        )
    print(f"{scorer([args.prompt], [args.response])[0]:.4f}")
    return 0


def _score_args(p):
    p.add_argument("prompt", help="the user's message")
    p.add_argument("response", help="the answer to score")
    p.add_argument(
        "--model",
        help="with --adapter: the base model the reward run was trained on (default: the one it "
        "records); alone: a reward model directory (a reward run's output.dir, a merged one, or "
        "any transformers sequence-classification model, e.g. from TRL's RewardTrainer)",
    )
    p.add_argument("--adapter", help="output.dir of a reward run (task.type=reward)")


def cmd_tasks(args) -> int:
    for name in task_names():
        print(f"{name:<12} {get_task(name).help}")
    return 0


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
    p.add_argument(
        "--config",
        help="quick-start config (default: the built-in one, also in examples/quickstart.yaml)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=40")


def cmd_compare(args) -> int:
    from ..recipes import compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods is empty; give names from `tunesmith methods`, e.g. lora,ia3")
    out = args.output or str(_load(args).output.dir) + "/compare"
    rows = compare.run(args.config, methods, args.overrides, out, args.metric, args.set)
    print(compare.markdown_table(rows))
    print(f"table, CSV and plot written to {out}")
    return 1 if any(compare.failed(r) for r in rows) else 0


def _compare_args(p):
    _config_args(p)
    p.add_argument(
        "--methods", required=True, help="comma-separated method names, e.g. lora,ia3,adapter"
    )
    p.add_argument(
        "--metric", default="exact_match", help="metrics.json key to tabulate (e.g. test_loss)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an override for one method only, e.g. --set prompt_tuning:train.lr=3e-2 (repeatable)",
    )
    p.add_argument("--output", help="report directory (default: <output.dir>/compare)")


def cmd_serve(args) -> int:
    from ..serving.server import serve_from_args

    return serve_from_args(args, on_ready=lambda url: print(f"serving on {url}", flush=True))


def _serve_args(p):
    from ..serving.options import add_serve_args

    add_serve_args(p)


COMMANDS = {
    "train": (cmd_train, _train_args, "fine-tune: tunesmith train CONFIG.yaml [key.sub=value ...]"),
    "eval": (cmd_eval, _eval_args, "score a model (+ adapter) on the config's held-out data"),
    "generate": (cmd_generate, _generate_args, "generate text from a prompt (argument or stdin)"),
    "merge": (
        cmd_merge,
        merge_args,
        "merge an adapter into the base and save a transformers directory",
    ),
    "info": (
        cmd_info,
        _info_args,
        "model, parameter counts, trainable counts, weight bytes and quantization",
    ),
    "quantize": (
        cmd_quantize,
        quantize_args,
        "quantize a base model (nf4/int8) into a directory that loads as is",
    ),
    "methods": (cmd_methods, lambda p: None, "list the registered fine-tuning methods"),
    "tasks": (cmd_tasks, lambda p: None, "list the registered task types (task.type)"),
    "score": (cmd_score, _score_args, "print a reward model's score of a prompt + response"),
    "compare": (
        cmd_compare,
        _compare_args,
        "train several methods on one task and tabulate the results",
    ),
    "quickstart": (
        cmd_quickstart,
        _quickstart_args,
        "fine-tune the embedded model on the built-in task, before/after",
    ),
    "classify": (
        cmd_classify,
        _classify_args,
        "label texts (argument or stdin) with a trained classifier",
    ),
    "serve": (cmd_serve, _serve_args, "serve models and adapters over an OpenAI-compatible API"),
    "export": (cmd_export, export_args, "write a model (+ merged adapter) as a GGUF file"),
    "table": (
        cmd_table,
        _table_args,
        "run a config with several override sets and tabulate the metrics",
    ),
}
