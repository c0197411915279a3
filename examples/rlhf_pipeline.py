"""The course's post-training pipeline on the embedded model, stage by stage, timed and compared:

    SFT on the instructions -> reward model on the pairs -> PPO against it, and DPO from the same
    SFT model; then the reward model's win rate of DPO's and PPO's answers over the SFT model's on
    held-out prompts, the KL of each to the SFT model, and sample answers side by side.

Run from the repository root (each stage is an ordinary `tunesmith train` run with its example
config; a finished stage is skipped when run again, so an interrupted pipeline resumes):

    python examples/rlhf_pipeline.py [--out runs/pipeline] [--stages sft,reward,dpo,ppo,report]

Data: ../shared/data/preference_rasbt split once, seeded, 85/5/10 into train/eval/test files, so
every stage trains and is scored on the same prompts. Writes OUT/report.md and OUT/report.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import tunesmith
from tunesmith.api import merge_to_directory
from tunesmith.data import read_records, split_records
from tunesmith.data.prompts import collate_prompts, encode_prompt, read_prompts
from tunesmith.evaluation import generate
from tunesmith.methods import disabled_adapters
from tunesmith.methods.io import load_adapter
from tunesmith.models import load_base_model
from tunesmith.objectives.logps import token_logps
from tunesmith.rl.rollout import Sampling, sample
from tunesmith.tasks import get_task

DATA = "../shared/data/preference_rasbt/instruction-data-with-preference.json"
STAGES = ("sft", "reward", "dpo", "ppo", "report")
CONFIGS = {  # stage -> example config (the settings are documented there)
    "sft": "examples/sft_preference_rasbt.yaml",
    "reward": "examples/reward_preference_rasbt.yaml",
    "dpo": "examples/dpo_preference_rasbt.yaml",
    "ppo": "examples/ppo_preference_rasbt.yaml",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/pipeline")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--report-limit", type=int, default=0, help="held-out prompts (0: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for the stages run now, e.g. --set dpo.beta=0.25 (repeatable)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    files = split_files(args.data, out / "data")
    timings = _read_json(out / "timings.json")
    for stage in args.stages.split(","):
        if stage == "report":
            report(out, files, timings, args.report_limit)
        elif stage in CONFIGS:
            timings[stage] = run_stage(stage, out, files, timings, args.set)
            (out / "timings.json").write_text(json.dumps(timings, indent=2))
        else:
            sys.exit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return 0


def split_files(data: str, folder: Path) -> dict:
    """data split once (seed 0, 85/5/10) into JSON files that every stage reads."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.json" for name in ("train", "eval", "test")}
    if not all(p.is_file() for p in paths.values()):
        records = [
            {k: v for k, v in r.items() if not k.startswith("_")} for r in read_records(data)
        ]
        records = [r for r in records if r["chosen"] != r["rejected"]]
        parts = split_records(records, [0.85, 0.05, 0.10], 0)
        for path, part in zip(paths.values(), parts):
            path.write_text(json.dumps(part, indent=1))
    return {name: str(p) for name, p in paths.items()}


def run_stage(stage: str, out: Path, files: dict, timings: dict, extra=()) -> dict:
    """Train one stage (skipped when its metrics.json exists); returns its time and metrics."""
    run_dir = out / stage
    if (run_dir / "metrics.json").is_file() and stage in timings:
        print(f"{stage}: done before, skipped")
        return timings[stage]
    overrides = [
        f"data.train={files['train']}",
        f"data.eval={files['eval']}",
        f"data.test={files['test']}",
        f"output.dir={run_dir}",
    ]
    if stage != "sft":
        overrides.append(f"model.name={out / 'sft_merged'}")
    if stage == "ppo":
        overrides.append(f"reward.model={out / 'reward'}")
    cfg = tunesmith.load_config(CONFIGS[stage], overrides + list(extra))
    start = time.perf_counter()
    metrics = get_task(cfg.task.type).train(cfg, True)
    seconds = time.perf_counter() - start
    if stage == "sft":
        merge_to_directory("default", str(run_dir), str(out / "sft_merged"))
    print(f"{stage}: {seconds:.0f} s")
    return {"seconds": seconds, "metrics": metrics}


@torch.no_grad()
def report(out: Path, files: dict, timings: dict, limit: int) -> None:
    """Win rates (by the reward model) of DPO and PPO over SFT on the held-out prompts, KL to SFT
    (Monte Carlo over one sampled answer per prompt), samples; OUT/report.md and report.json."""
    from tunesmith.recipes.reward import load_reward_scorer

    torch.manual_seed(0)
    prompts = read_prompts(files["test"])[: limit or None]
    score = load_reward_scorer(str(out / "reward"))
    model, tokenizer = load_base_model(str(out / "sft_merged"))
    messages = [p.messages for p in prompts]
    answers = {"sft": generate(model, tokenizer, messages, 96, batch_size=16)}
    rewards = {"sft": score([p.text for p in prompts], answers["sft"])}
    rows = {}
    for policy in ("dpo", "ppo"):
        if not (out / policy / "adapter_config.json").is_file():
            continue
        model, tokenizer = load_base_model(str(out / "sft_merged"))
        load_adapter(model, str(out / policy))
        answers[policy] = generate(model, tokenizer, messages, 96, batch_size=16)
        rewards[policy] = score([p.text for p in prompts], answers[policy])
        rows[policy] = {
            "win_rate_vs_sft": _win_rate(rewards[policy], rewards["sft"]),
            "mean_reward": sum(rewards[policy]) / len(prompts),
            "kl_to_sft": sampled_kl(model, tokenizer, prompts),
        }
    rows["sft"] = {"mean_reward": sum(rewards["sft"]) / len(prompts)}
    result = {"held_out_prompts": len(prompts), "policies": rows, "timings": timings}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(_markdown(result, prompts, answers, rewards))
    print((out / "report.md").read_text())


def sampled_kl(model, tokenizer, prompts, batch_size: int = 16) -> float:
    """Mean over prompts of sum_t log pi(y_t) - log pi_sft(y_t) for one answer y sampled from the
    policy at temperature 1: an unbiased estimate of KL(policy || SFT) per answer."""
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_prompt(p, tokenizer, 256) for p in prompts[start : start + batch_size]]
        rollout = sample(
            model, tokenizer, collate_prompts(chunk, tokenizer.pad_token_id), Sampling(96)
        )
        policy = token_logps(model, **rollout.batch()).logps.sum(1)
        with disabled_adapters(model):
            reference = token_logps(model, **rollout.batch()).logps.sum(1)
        total += float((policy - reference).sum())
    return total / len(prompts)


def _win_rate(rewards: list, baseline: list) -> float:
    return sum((r > b) + 0.5 * (r == b) for r, b in zip(rewards, baseline)) / len(rewards)


def _markdown(result: dict, prompts, answers: dict, rewards: dict) -> str:
    lines = [f"Held-out prompts: {result['held_out_prompts']}", ""]
    lines += ["| stage | minutes | key metrics |", "|---|---:|---|"]
    for stage, t in result["timings"].items():
        m = t["metrics"]
        keys = [
            k for k in ("accuracy", "rewards/accuracies", "rewards/margins", "reward") if k in m
        ]
        shown = (
            ", ".join(f"{k} {m[k]:.3f}" for k in keys)
            or f"loss {m.get('test_loss', m.get('train_loss', 0)):.3f}"
        )
        lines.append(f"| {stage} | {t['seconds'] / 60:.1f} | {shown} |")
    lines += [
        "",
        "| policy | win rate vs SFT | mean reward | KL to SFT (nats/answer) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["policies"].items():
        win, kl = row.get("win_rate_vs_sft"), row.get("kl_to_sft")
        lines.append(
            f"| {name} | {'' if win is None else f'{win:.3f}'} | {row['mean_reward']:.3f} | "
            f"{'' if kl is None else f'{kl:.2f}'} |"
        )
    lines += ["", "Samples (reward in brackets):", ""]
    for i in range(min(3, len(prompts))):
        lines.append(f"**Prompt:** {prompts[i].text}")
        for name in answers:
            lines.append(f"- {name} [{rewards[name][i]:.2f}]: {answers[name][i]!r}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
