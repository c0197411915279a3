"""Train a tiny random Llama on generated records with tunesmith's loop; run once per rank by
torchrun in the distributed tests (or in-process for the one-process reference).

Rank 0 writes the trained parameters (whole tensors) to OUT/<method>/weights.safetensors; several
--methods train one after the other in the same processes (one start-up for all). --fail-step makes
one rank fail at that step: raise (a clear error), die at once (a killed process) or stall.
--eval-examples N validates on N held-out examples every 2 steps and after training; every rank
appends what it computed to OUT/<method>/eval-rank<r>.jsonl.
--load-dir loads the base from a model directory instead (on the meta device under FSDP, each
rank reading its shards); --dump-loaded first writes each method's model as loaded and sharded
(whole parameters and the logits of a fixed input) to OUT/<method>/loaded.safetensors.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.nn.utils.rnn import pad_sequence  # noqa: E402

from tests.tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from tunesmith.config.schema import DistributedConfig, TrainConfig  # noqa: E402
from tunesmith.data import encode_records  # noqa: E402
from tunesmith.errors import TrainingError  # noqa: E402
from tunesmith.evaluation import mean_loss  # noqa: E402
from tunesmith.methods import apply_method  # noqa: E402
from tunesmith.methods.full import FullConfig  # noqa: E402
from tunesmith.methods.lora import LoraConfig  # noqa: E402
from tunesmith.models.loading import load_base_model  # noqa: E402
from tunesmith.models.meta_init import real_new_parameters  # noqa: E402
from tunesmith.tasks.classify.modes.common import validation  # noqa: E402
from tunesmith.training import sft_objective, train  # noqa: E402
from tunesmith.training.distributed import (  # noqa: E402
    distributed_run,
    parallel_for,
    shards_parameters,
)
from tunesmith.utils.distributed import is_main_process, rank  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default="lora", help="comma-separated: lora, full")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=0)
    p.add_argument("--fail-how", choices=["raise", "die", "stall"], default="raise")
    p.add_argument("--eval-examples", type=int, default=0)
    p.add_argument("--load-dir", help="a model directory to load the base from")
    p.add_argument("--dump-loaded", action="store_true")
    return p.parse_args(argv)


def examples(n: int = 40, first: int = 0):
    # Answers of different lengths, so ranks' micro-batches carry different numbers of loss terms.
    records = [
        {"instruction": f"count {i}", "output": "x" * (1 + i % 7), "_source": f"t:{i}"}
        for i in range(first, first + n)
    ]
    return encode_records(records, tiny_tokenizer(), "auto", 64)[0]


def model(method: str, dropout: float = 0.0, load_dir=None, train_cfg=None):
    lora = LoraConfig(r=4, target_modules="all-linear", dropout=dropout)
    cfg = lora if method == "lora" else FullConfig()
    if load_dir is None:
        return apply_method(tiny_llama(seed=3), cfg)
    torch.manual_seed(3)  # the method's initialisation draws as after tiny_llama(seed=3)
    base, _ = load_base_model(load_dir, on_meta=shards_parameters(train_cfg))
    with real_new_parameters():
        return apply_method(base, cfg)


def dump_loaded(args, cfg: TrainConfig, method: str, out: Path) -> None:
    """The model as loaded and (under FSDP) sharded, gathered whole: parameters and logits."""
    net = model(method, load_dir=args.load_dir, train_cfg=cfg)
    on_meta = any(p.is_meta for p in net.parameters())
    parallel_for(net, sft_objective(pad_id=0), cfg).finish()
    with torch.no_grad():  # on every rank: the forward runs the blocks' FSDP hooks
        logits = net(torch.arange(24).view(2, 12)).logits  # (2, 12, vocab)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous() for n, p in net.named_parameters()}
        save_file({**tensors, "logits": logits}, str(out / "loaded.safetensors"))
        (out / "built_on_meta").write_text(str(int(on_meta)))


def failing_objective(args):
    objective = sft_objective(pad_id=0)
    inner, calls = objective.loss, {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        if rank() == args.fail_rank and calls["n"] == args.fail_step * args.grad_accum:
            if args.fail_how == "raise":
                raise TrainingError(f"injected failure at step {args.fail_step}")
            if args.fail_how == "die":
                os._exit(3)  # as if the process were killed
            time.sleep(600)  # a stalled rank
        return inner(m, batch)

    objective.loss = loss
    return objective


class NextTokenClassifier:
    """Three classes, scored by the logits of three token ids after each example's last token."""

    labels, token_ids = ["a", "b", "c"], [5, 6, 7]

    def __init__(self, net):
        self.net = net

    @torch.no_grad()
    def predict_proba(self, examples: list):
        ids = pad_sequence([torch.tensor(e.input_ids) for e in examples], batch_first=True)
        mask = pad_sequence([torch.ones(len(e.input_ids)) for e in examples], batch_first=True)
        logits = self.net(input_ids=ids, attention_mask=mask.long()).logits  # (N, T, V)
        last = logits[torch.arange(len(examples)), mask.sum(1).long() - 1]  # (N, V)
        return torch.softmax(last[:, self.token_ids].float(), -1).numpy()  # (N, 3)


class Labelled:
    def __init__(self, example, label: str):
        self.input_ids, self.label = example.input_ids, label


def evaluator(net, held: list, cfg: TrainConfig, out: Path):
    """evaluate() for the loop: the LM loss of `held` in batches of 3 and a classification of it,
    with the rows this rank's forwards saw (its share); each rank appends them to its file."""
    splits = SimpleNamespace(eval=[Labelled(e, "abc"[i % 3]) for i, e in enumerate(held)])
    classify = validation(NextTokenClassifier(net), splits, SimpleNamespace(train=cfg))
    rows = {"n": 0}
    net.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: rows.update(n=rows["n"] + inputs[0].shape[0])
    )

    out.mkdir(parents=True, exist_ok=True)

    def evaluate() -> dict:
        rows["n"] = 0
        scores = classify()
        metrics = {
            "eval_loss": mean_loss(net, held, 0, batch_size=3),
            "eval_class_loss": scores["eval_loss"],
            "eval_accuracy": scores["eval_accuracy"],
            "rows": rows["n"],
        }
        with open(out / f"eval-rank{rank()}.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        return metrics

    return evaluate


def run(args) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=1e-2,
        warmup_steps=1,
        log_every=1,
        save_every=args.save_every,
        eval_every=2 if args.eval_examples else 0,
        seed=11,
        precision="fp32",
        distributed=DistributedConfig(strategy=args.strategy, timeout=args.timeout, threads=1),
    )
    with distributed_run(cfg.distributed):
        for method in args.methods.split(","):
            if args.dump_loaded:
                dump_loaded(args, cfg, method, Path(args.out) / method)
            net = model(method, args.dropout, args.load_dir, cfg)
            out = Path(args.out) / method
            held = examples(args.eval_examples, first=100) if args.eval_examples else []
            evaluate = evaluator(net, held, cfg, out) if held else None
            result = train(net, examples(), cfg, out, failing_objective(args), evaluate=evaluate)
            if evaluate is not None:  # after training, on every rank, as a task's evaluation runs
                evaluate()
            if is_main_process():
                (out / "resumed_from").write_text(str(result.resumed_from))
                weights = {n: p.detach().contiguous() for n, p in net.named_parameters()}
                save_file(weights, str(out / "weights.safetensors"))


if __name__ == "__main__":
    run(parse())
