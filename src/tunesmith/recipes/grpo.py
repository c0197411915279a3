"""GRPO / RLOO (task.type=grpo): each step samples grpo.num_generations answers per prompt from the
policy, scores them with the reward, turns the rewards into group-relative advantages and takes
grpo.num_iterations clipped policy-gradient updates, with a k3 KL penalty to the reference (the
same model with its adapter disabled). No value head.

Writes to output.dir what every run writes (adapter, best/ at the highest held-out reward,
checkpoints/last, metrics.jsonl with reward/kl/entropy per step, curves); metrics.json holds the
held-out split's reward, the reference's and the policy's win rate over it.
"""

from functools import partial

import torch

from ..config.schema import RunConfig
from ..methods import disabled_adapters
from ..objectives.grpo import aggregate, group_advantages, grpo_token_loss
from ..objectives.logps import token_logps
from ..objectives.policy import masked_mean
from ..rl.rewards import reward_scorer
from ..rl.rollout import Sampling, sample
from .common import build_model
from .on_policy import (
    load_prompt_splits,
    prompt_objective,
    train_on_policy,
)
from .preference_common import start_run

CURVES = ("reward", "kl", "entropy")


def run(cfg: RunConfig, progress: bool = False) -> dict:
    start_run(cfg)
    model, tokenizer = build_model(cfg)
    splits = load_prompt_splits(cfg.data, tokenizer, cfg.train.seed)
    scorer = reward_scorer(cfg.reward)
    g = cfg.grpo
    objective = prompt_objective(
        tokenizer.pad_token_id,
        loss=partial(grpo_loss, g=g),
        updates=partial(plan_updates, tokenizer=tokenizer, scorer=scorer, g=g),
        updates_per_step=g.num_iterations,
    )
    return train_on_policy(cfg, model, tokenizer, splits, objective, scorer, progress, CURVES)


def plan_updates(model, batches: list, tokenizer, scorer, g) -> list:
    """The step's rollouts (one per micro-batch of prompts), used by num_iterations updates."""
    rollouts = [scored_rollout(model, tokenizer, batch, scorer, g) for batch in batches]
    return [rollouts] * g.num_iterations


def scored_rollout(model, tokenizer, prompts: dict, scorer, g) -> dict:
    """A training batch of k sampled answers per prompt with their advantages, the reference's
    log-probs, the sampler's (when several updates use them) and the rollout's metrics."""
    sampling = Sampling(g.max_new_tokens, g.temperature, g.top_p)
    rollout = sample(model, tokenizer, prompts, sampling, repeats=g.num_generations)
    rewards = torch.tensor(scorer(rollout.records, rollout.texts), dtype=torch.float32)
    batch = rollout.batch()
    with disabled_adapters(model):
        reference = token_logps(model, **batch, temperature=g.temperature).logps
    old = (
        token_logps(model, **batch, temperature=g.temperature).logps
        if g.num_iterations > 1
        else None
    )
    groups = rewards.view(-1, g.num_generations)
    return {
        **batch,
        "advantages": group_advantages(rewards, g.num_generations, g.advantage, g.scale_rewards),
        "reference_logps": reference,
        "old_logps": old,
        "rollout_metrics": {
            "reward": float(rewards.mean()),
            "reward_std": float(groups.std(1).mean()),
            "frac_reward_zero_std": float((groups.std(1) < 1e-8).float().mean()),
            "completion_length": float(rollout.response_lengths.float().mean()),
            "eos_rate": float(rollout.ended.float().mean()),
        },
    }


def grpo_loss(model, batch: dict, g):
    """(loss, terms, metrics) of one rollout batch under the current policy."""
    stats = token_logps(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        temperature=g.temperature,
        with_entropy=True,
    )
    old = batch["old_logps"] if batch["old_logps"] is not None else stats.logps.detach()
    per_token, kl, clipped = grpo_token_loss(
        stats.logps,
        old,
        batch["reference_logps"],
        batch["advantages"],
        g.beta,
        g.epsilon,
        g.epsilon if g.epsilon_high is None else g.epsilon_high,
    )
    loss, n = aggregate(per_token, stats.mask, g.loss_type, g.max_new_tokens)
    metrics = {
        **batch["rollout_metrics"],
        "kl": float(masked_mean(kl.detach(), stats.mask)),
        "entropy": float(masked_mean(stats.entropy, stats.mask)),
        "clip_ratio": float(masked_mean(clipped, stats.mask)),
    }
    return loss, n, metrics
