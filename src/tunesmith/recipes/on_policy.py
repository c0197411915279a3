"""What the on-policy tasks (ppo, grpo) share: prompt splits, the reward of held-out answers, and a
run's train-save-report tail.

The policy is the model with cfg.method applied; the reference is the same model with its adapter
disabled. Held-out prompts are answered greedily (no RNG drawn, so evaluation never shifts the
training samples) and scored by the run's reward.
"""

import logging
from functools import partial
from pathlib import Path

import torch

from ..config.schema import DataConfig, RunConfig
from ..data import Splits, read_parts
from ..data.prompts import collate_prompts, encode_prompt, read_prompts
from ..errors import DataError
from ..evaluation import generate
from ..methods import disabled_adapters
from ..rl.rewards import reward_scorer
from ..training.objective import Objective
from ..training.plots import plot_curves
from .preference_common import evaluate_adapter_run, train_and_report

log = logging.getLogger(__name__)


def load_prompt_splits(cfg: DataConfig, tokenizer, seed: int) -> Splits:
    """Encoded prompts (data.prompts.encode_prompt) of data.train and data.eval / data.test, or of
    the seeded data.split of data.train."""
    if not cfg.train:
        raise DataError("data.train is not set: give a file of prompts (see docs/alignment.md)")
    parts = read_parts(cfg, seed, lambda path: read_prompts(path, cfg.file_type, cfg.system_prompt))
    encoded = [[encode_prompt(p, tokenizer, cfg.max_length) for p in part] for part in parts]
    for name, part in zip(("train", "eval", "test"), encoded):
        log.info("data %s: %d prompts", name, len(part))
    if not encoded[0]:
        raise DataError(
            f"no training prompts left from {cfg.train}: lower the eval/test fractions of data.split"
        )
    return Splits(*encoded)


def prompt_objective(pad_id: int, loss, updates, updates_per_step: int) -> Objective:
    """Batches of prompts; each step's rollouts and updates come from `updates`."""
    return Objective(
        partial(collate_prompts, pad_id=pad_id),
        loss,
        updates=updates,
        updates_per_step=updates_per_step,
    )


@torch.no_grad()
def held_out_rewards(model, tokenizer, examples: list, scorer, eval_cfg) -> dict:
    """Mean reward of the policy's greedy answers to `examples` (encoded prompts; the first
    eval.limit), and of the reference's (adapter disabled) for comparison; also the policy's win
    rate over it."""
    limit, max_new_tokens, batch_size = eval_cfg.limit, eval_cfg.max_new_tokens, eval_cfg.batch_size
    records = [e["record"] for e in examples[:limit]]
    prompts = [r.messages for r in records]
    answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    with disabled_adapters(model):
        baseline = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    rewards, reference = scorer(records, answers), scorer(records, baseline)
    wins = sum((r > b) + 0.5 * (r == b) for r, b in zip(rewards, reference))
    return {
        "reward": sum(rewards) / len(rewards),
        "reward_reference": sum(reference) / len(reference),
        "win_rate_vs_reference": wins / len(rewards),
    }


def train_on_policy(
    cfg: RunConfig, model, tokenizer, splits: Splits, objective, scorer, progress, curves, save=None
):
    """Run the loop (validation: the held-out reward, as eval_loss = -reward, so best/ keeps the
    most rewarded adapter), save the adapter (or save(directory): what else the task keeps, e.g.
    PPO's value head), and write metrics.json with the test (else validation) split's held-out
    rewards; reward_curve.png draws the logged metrics named in `curves` (reward, KL, ...)."""

    def held_out(part):
        metrics = held_out_rewards(model, tokenizer, part, scorer, cfg.eval)
        return {"loss": -metrics["reward"], **metrics}

    metrics = train_and_report(
        cfg,
        model,
        splits,
        objective,
        held_out=held_out,
        save=save,
        progress=progress,
    )
    out = Path(cfg.output.dir)
    plot_curves(out / "metrics.jsonl", out / "reward_curve.png", curves)
    return metrics


def evaluate_on_policy(cfg: RunConfig, split: str = "test", adapter=None) -> dict:
    """Held-out reward of the adapter in output.dir (or `adapter`) on `split`, the reference's
    (adapter disabled), and the win rate over it; written to metrics.json."""
    scorer = reward_scorer(cfg.reward)
    return evaluate_adapter_run(
        cfg,
        split,
        adapter,
        load_prompt_splits,
        lambda model, examples, tokenizer: held_out_rewards(
            model, tokenizer, examples, scorer, cfg.eval
        ),
    )
