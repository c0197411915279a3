"""PPO-RLHF (task.type=ppo): the policy (model + cfg.method) samples answers to a step's prompts,
the reward scores them, and PPO updates the policy and a value head on its trunk against a per-token
KL penalty to the reference (the same model, adapter disabled).

A step (PpoStep.updates): sample; score = reward - ppo.missing_eos_penalty for an answer without
EOS; old log-probs and values (policy) and reference log-probs; per-token rewards -kl_coef * KL_t
plus the score on the last token; GAE; whitened advantages; then ppo.epochs x ppo.minibatches
optimizer updates, each minibatch drawn by a torch.randperm per epoch (the global RNG, which
checkpoints keep, so a resumed run replays the same updates). The KL coefficient (fixed or
adaptive) is the objective's state, saved in every checkpoint.

The value head is Linear(hidden, 1) (TRL's AutoModelForCausalLMWithValueHead), registered on the
model as `value_head`, so the loop trains and checkpoints it with the adapter; it is saved beside
the adapter as value_head.safetensors and the adapter stays a plain PEFT-layout adapter.
"""

import dataclasses
import logging
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..config.schema import RunConfig
from ..data.encode import IGNORE
from ..errors import TrainingError
from ..methods import disabled_adapters
from ..methods.io import save_adapter
from ..objectives.logps import token_logps
from ..objectives.policy import kl_estimate, masked_mean, masked_whiten
from ..objectives.ppo import AdaptiveKL, gae, ppo_policy_loss, ppo_value_loss, token_rewards
from ..rl.rewards import reward_scorer
from ..rl.rollout import Sampling, sample
from ..utils.distributed import is_main_process
from ..utils.files import atomic_path
from .common import build_model, log_parameters
from .on_policy import (
    load_prompt_splits,
    prompt_objective,
    train_on_policy,
)
from .preference_common import start_run

log = logging.getLogger(__name__)
VALUE_HEAD_FILE = "value_head.safetensors"
CURVES = ("objective/scores", "objective/kl", "objective/entropy")  # reward_curve.png
_ROWS = ("input_ids", "attention_mask", "labels")  # (N, T)
_TOKENS = ("old_logps", "values", "advantages", "returns")  # (N, T-1), position t predicts t+1


def run(cfg: RunConfig, progress: bool = False) -> dict:
    """Train cfg.method and a value head with PPO against cfg.reward; returns the final metrics
    (metrics.json: the held-out split's reward, the reference's and the win rate over it)."""
    start_run(cfg)
    model, tokenizer = build_model(cfg)
    attach_value_head(model)
    log_parameters(model, f"policy ({cfg.method.name} + value head)")
    splits = load_prompt_splits(cfg.data, tokenizer, cfg.train.seed)
    scorer = reward_scorer(cfg.reward)
    step = PpoStep(cfg, tokenizer, scorer)
    objective = prompt_objective(
        tokenizer.pad_token_id,
        partial(ppo_loss, cfg=cfg.ppo),
        step.updates,
        cfg.ppo.epochs * cfg.ppo.minibatches,
    )
    objective = dataclasses.replace(objective, state=step.state)
    save = partial(save_policy, model, base_model=cfg.model.name)
    return train_on_policy(
        cfg, model, tokenizer, splits, objective, scorer, progress, CURVES, save=save
    )


# ---- the value head ------------------------------------------------------------------------------


def attach_value_head(model) -> nn.Linear:
    """Register a trainable Linear(hidden, 1) as model.value_head, in float32 and zero-initialised
    (values start at 0, as the returns of an untrained policy are centred by the whitening)."""
    hidden = model.get_output_embeddings().in_features
    device = model.get_output_embeddings().weight.device
    head = nn.Linear(hidden, 1, dtype=torch.float32, device=device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model.add_module("value_head", head)
    return head


def values_of(model, hidden: torch.Tensor) -> torch.Tensor:
    """The value head on the last hidden states (B, T, H) -> (B, T), in float32 (also under a
    bf16 autocast: values and returns are regressed, so they keep full precision)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return model.value_head(hidden.float())[..., 0]


def save_policy(model, out_dir, base_model: str) -> None:
    """The adapter (PEFT layout) and value_head.safetensors in out_dir."""
    if not is_main_process():  # under torchrun, rank 0 alone writes the run's files
        return
    save_adapter(model, out_dir, base_model=base_model)
    # Its parameters, copied: under FSDP the module's state_dict() holds shards, not the weights.
    head = {k: v.detach().float().cpu().clone() for k, v in model.value_head.named_parameters()}
    with atomic_path(Path(out_dir) / VALUE_HEAD_FILE) as tmp:
        save_file(head, str(tmp), metadata={"format": "pt"})


# ---- a step: rollouts -> the minibatches of several updates --------------------------------------


class PpoState:
    """What a PPO run carries from step to step: the KL coefficient and the steps taken."""

    def __init__(self, ppo_cfg):
        target = ppo_cfg.target_kl if ppo_cfg.adaptive_kl else None
        self.kl, self.steps = AdaptiveKL(ppo_cfg.kl_coef, target, ppo_cfg.horizon), 0

    def state_dict(self) -> dict:
        return {**self.kl.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state)
        self.steps = int(state["steps"])


class PpoStep:
    """Objective.updates for PPO (see the module docstring)."""

    def __init__(self, cfg: RunConfig, tokenizer, scorer):
        self.p, self.tokenizer, self.scorer = cfg.ppo, tokenizer, scorer
        self.micro = cfg.train.batch_size  # rows per forward pass
        self.sampling = Sampling(cfg.ppo.max_new_tokens, cfg.ppo.temperature, cfg.ppo.top_p)
        self.state = PpoState(cfg.ppo)

    def updates(self, model, batches: list[dict]) -> list[list[dict]]:
        rollouts = [sample(model, self.tokenizer, b, self.sampling) for b in batches]
        data = _concat(rollouts, self.tokenizer.pad_token_id)
        records = [r for x in rollouts for r in x.records]
        texts = [t for x in rollouts for t in x.texts]
        ended = torch.cat([x.ended for x in rollouts])  # (N,)
        scores = torch.tensor(self.scorer(records, texts), dtype=torch.float32)
        scores = scores - self.p.missing_eos_penalty * (~ended).float()
        stats = self.score_tokens(model, data)
        metrics = self.advantages(data, stats, scores)
        metrics.update(
            {
                "objective/scores": float(scores.mean()),
                "response_length": float(stats["mask"].sum(1).float().mean()),
                "eos_rate": float(ended.float().mean()),
            }
        )
        self.state.steps += 1
        check_kl(metrics["objective/kl"], self.p, self.state.steps)
        self.state.kl.update(metrics["objective/kl"], len(texts))
        return self.plan(data, metrics)

    def score_tokens(self, model, data: dict) -> dict:
        """Old log-probs, values and entropies (policy) and reference log-probs, (N, T-1) each."""
        out = {k: [] for k in ("old_logps", "values", "entropy", "reference", "mask")}
        n, width = data["input_ids"].shape
        for start in range(0, n, self.micro):
            rows = _trimmed({k: data[k] for k in _ROWS}, slice(start, start + self.micro))
            args = (rows["input_ids"], rows["attention_mask"], rows["labels"])
            policy = token_logps(
                model, *args, temperature=self.p.temperature, with_hidden=True, with_entropy=True
            )
            with disabled_adapters(model):
                reference = token_logps(model, *args, temperature=self.p.temperature)
            values = values_of(model, policy.hidden)
            parts = (policy.logps, values, policy.entropy, reference.logps, policy.mask)
            for key, part in zip(out, parts):
                out[key].append(F.pad(part, (0, width - 1 - part.shape[1])))
        return {k: torch.cat(v) for k, v in out.items()}

    def advantages(self, data: dict, stats: dict, scores: torch.Tensor) -> dict:
        """Fill data with the rollout's old log-probs, values, advantages and returns; returns
        the rollout metrics (KL and entropy: summed per answer, averaged over answers)."""
        p, mask = self.p, stats["mask"]
        kl = kl_estimate(stats["old_logps"], stats["reference"], p.kl_estimator) * mask
        values = stats["values"] * mask
        rewards = token_rewards(kl, scores, mask, self.state.kl.value)
        if p.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = masked_whiten(advantages, mask) * mask
        data.update(
            old_logps=stats["old_logps"], values=values, advantages=advantages, returns=returns
        )
        return {
            "objective/kl": float(kl.sum(1).mean()),
            "objective/entropy": float((stats["entropy"] * mask).sum(1).mean()),
            "objective/non_score_reward": float((-self.state.kl.value * kl).sum(1).mean()),
            "kl_coef": self.state.kl.value,
            "val/mean": float(masked_mean(values, mask)),
        }

    def plan(self, data: dict, metrics: dict) -> list[list[dict]]:
        """ppo.epochs x ppo.minibatches updates, each a list of micro-batches (<= batch_size
        rows) of a shuffled rollout batch."""
        n = data["input_ids"].shape[0]
        updates = []
        for _ in range(self.p.epochs):
            order = torch.randperm(n)
            for rows in order.tensor_split(self.p.minibatches):
                updates.append(
                    [
                        _trimmed(data, chunk) | {"stats": metrics}
                        for chunk in rows.split(self.micro)
                        if len(chunk)
                    ]
                )
        return updates


def check_kl(kl: float, ppo_cfg, step: int) -> None:
    """The guard rails: raise TrainingError when the mean KL per answer leaves its bounds."""
    if ppo_cfg.kl_stop_below is not None and kl < ppo_cfg.kl_stop_below:
        raise TrainingError(
            f"the mean KL to the reference is {kl:.3f} nats per answer at step {step}, below "
            f"ppo.kl_stop_below={ppo_cfg.kl_stop_below}: the policy's own samples look less "
            f"likely to it than to the reference, which only happens when the samples do not come "
            f"from the scored distribution (ppo.top_p < 1, other generation settings) or the "
            f"updates are too large (lower train.lr); training stopped, the last checkpoint kept"
        )
    if ppo_cfg.kl_stop_above is not None and kl > ppo_cfg.kl_stop_above:
        raise TrainingError(
            f"the mean KL to the reference is {kl:.3f} nats per answer at step {step}, above "
            f"ppo.kl_stop_above={ppo_cfg.kl_stop_above}: the policy ran away from the reference; "
            f"lower train.lr, raise ppo.kl_coef or set ppo.adaptive_kl=true; training stopped, "
            f"the last checkpoint kept"
        )


def _concat(rollouts: list, pad_id: int) -> dict:
    """The rollouts' rows (right-padded) as one batch: input_ids, attention_mask, labels (N, T)."""
    width = max(r.input_ids.shape[1] for r in rollouts)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    return {
        key: torch.cat(
            [F.pad(r.batch()[key], (0, width - r.input_ids.shape[1]), value=v) for r in rollouts]
        )
        for key, v in fill.items()
    }


def _trimmed(data: dict, rows) -> dict:
    """data's `rows`, cut to their longest real row (T) and T-1 token positions."""
    width = int(data["attention_mask"][rows].sum(1).max())
    return {k: v[rows][:, : width if k in _ROWS else width - 1] for k, v in data.items()}


def ppo_loss(model, batch: dict, cfg):
    """(policy loss + vf_coef * value loss, response tokens, metrics) of a minibatch; both losses
    are means over its response tokens."""
    stats = token_logps(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        temperature=cfg.temperature,
        with_hidden=True,
    )
    mask = stats.mask
    values = values_of(model, stats.hidden)
    policy_loss, policy_stats = ppo_policy_loss(
        stats.logps, batch["old_logps"], batch["advantages"], mask, cfg.cliprange
    )
    value_loss, value_stats = ppo_value_loss(
        values, batch["values"], batch["returns"], mask, cfg.cliprange_value
    )
    metrics = {
        **batch["stats"],
        **policy_stats,
        **value_stats,
        "loss/policy": float(policy_loss.detach()),
        "loss/value": float(value_loss.detach()),
    }
    return policy_loss + cfg.vf_coef * value_loss, int(mask.sum()), metrics
