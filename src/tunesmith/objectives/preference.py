"""Preference objectives: reward model, the DPO family, ORPO, SimPO and KTO, as functions of tensors.

Every function takes per-sequence log-probabilities (or rewards) and returns per-example losses,
so a recipe chooses the reduction. The formulas follow TRL 1.16 (DPOTrainer, RewardTrainer,
KTOTrainer, experimental CPO/ORPO trainers); tests/unit/objectives/test_preference.py checks them
against TRL's own code.

Notable:
- `response_logps` gathers log-probs only at labelled positions, one chunk of rows of the vocabulary
  at a time in float32, so it never builds a (B, T, V) float32 copy (or a log_softmax) of the logits.
- DPO rewards are beta * (log pi - log pi_ref); at policy == reference every reward and margin is
  exactly 0 and the sigmoid loss exactly log 2.
- ORPO and SimPO need *average* log-probs (`response_logps(..., average=True)`); the others sums.
"""

import torch
import torch.nn.functional as F

from ..errors import ConfigError

IGNORE = -100
DPO_LOSSES = (
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "bco_pair",
    "nca_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sigmoid_norm",
)
_LENGTH_NORMALISED = ("ipo", "sigmoid_norm")  # TRL divides these scores by the completion length


def response_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE,
    average: bool = False,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(B,) log-probability of each row's labelled tokens, summed (or averaged over them).

    Causal-LM shift: logits[:, t] scores labels[:, t + 1]. Positions labelled `ignore_index`
    (prompt, padding) carry nothing; a row without labelled tokens gets 0.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)"
        )
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != ignore_index
    rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,)
    pieces = []
    for start in range(0, rows.numel(), chunk_size):
        r, c = rows[start : start + chunk_size], cols[start : start + chunk_size]
        lg = logits[r, c].float()  # (n, V): only the selected positions
        picked = lg.gather(-1, targets[r, c].unsqueeze(-1)).squeeze(-1)  # (n,)
        pieces.append(picked - torch.logsumexp(lg, dim=-1))
    per_token = logits.new_zeros(targets.shape, dtype=torch.float32)  # (B, T-1)
    if pieces:
        per_token = per_token.index_put((rows, cols), torch.cat(pieces))
    total = per_token.sum(-1)  # summed per row in position order, as TRL does
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total


def response_lengths(labels: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """(B,) number of labelled (response) tokens per row, after the causal shift."""
    return (labels[:, 1:] != ignore_index).sum(-1)


def reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin=None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Bradley-Terry loss of a reward model: mean of -log sigmoid(r_c - r_r - margin), plus
    center_coef * mean((r_c + r_r)^2) (TRL's center_rewards_coefficient) to keep rewards near 0."""
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths=None,
    rejected_lengths=None,
):
    """DPO-family losses from summed response log-probs (each (B,)).

    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the rewards are
    beta * (policy - reference) log-ratios, detached. `label_smoothing` (the assumed rate of
    flipped labels) is used by "robust" only; "ipo" and "sigmoid_norm" need the response lengths
    (`response_lengths(labels)`). Raises ConfigError for an unknown loss type or a label_smoothing
    the loss does not use or cannot take.
    """
    _check_dpo_args(loss_type, beta, label_smoothing)
    chosen_ratio = policy_chosen - ref_chosen  # (B,)
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type in _LENGTH_NORMALISED:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"dpo loss {loss_type!r} needs chosen_lengths and rejected_lengths")
        delta = chosen_ratio / chosen_lengths.clamp(
            min=1
        ) - rejected_ratio / rejected_lengths.clamp(min=1)
    else:
        delta = chosen_ratio - rejected_ratio
    losses = _dpo_losses(loss_type, beta, label_smoothing, delta, chosen_ratio, rejected_ratio)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _dpo_losses(loss_type, beta, eps, delta, chosen_ratio, rejected_ratio):
    z = beta * delta
    if loss_type in ("sigmoid", "sigmoid_norm"):
        return -F.logsigmoid(z)
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    rc, rr = beta * chosen_ratio, beta * rejected_ratio
    if loss_type == "bco_pair":
        return -F.logsigmoid(rc) - F.logsigmoid(-rr)
    if loss_type == "nca_pair":
        return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "sppo_hard":
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(rc) + torch.sigmoid(rr)
    assert loss_type == "apo_down", loss_type
    return torch.sigmoid(rc) + 1 - torch.sigmoid(beta * (chosen_ratio - rejected_ratio))


def _check_dpo_args(loss_type, beta, label_smoothing):
    if loss_type not in DPO_LOSSES:
        raise ConfigError(
            f"dpo.loss must be one of {', '.join(DPO_LOSSES)} (or orpo, simpo), got {loss_type!r}"
        )
    if beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0, got {beta}")
    if label_smoothing and loss_type != "robust":
        raise ConfigError(
            f"dpo.label_smoothing={label_smoothing} is only used by dpo.loss=robust (or simpo); "
            f"set it to 0 for {loss_type!r}"
        )
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}")


def orpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, nll=None, lam: float = 0.1
):
    """ORPO: nll - lam * log sigmoid(log odds(chosen) - log odds(rejected)), per example.

    Takes *average* response log-probs (B,) and the chosen-side NLL (a scalar; TRL takes it over
    prompt + chosen response). odds(y) = p / (1 - p) with p = exp(avg logp). Returns (losses (B,),
    chosen_rewards, rejected_rewards) with rewards lam * avg logp, as TRL reports them.
    """
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))  # (B,)
    losses = -lam * F.logsigmoid(log_odds)
    if nll is not None:
        losses = losses + nll
    return losses, lam * c.detach(), lam * r.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(x)) for x < 0, switching form at -log 2 to avoid cancellation
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
):
    """SimPO (no reference model): -log sigmoid(beta * (avg_c - avg_r) - gamma), with optional label
    smoothing, per example. gamma is the target reward margin (TRL's simpo_gamma). Returns (losses,
    chosen_rewards, rejected_rewards) with rewards beta * avg logp."""
    if beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0 for simpo, got {beta}")
    z = beta * (chosen_avg_logps - rejected_avg_logps - gamma / beta)  # (B,)
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    return losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    policy_kl_logps=None,
    ref_kl_logps=None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
):
    """KTO on unpaired examples: summed log-probs (B,) of each completion under policy and reference,
    and `desirable` (B,) bool.

    The reference point z0 is the batch KL estimate mean(policy_kl - ref_kl) over mismatched
    (prompt, completion) pairs, clamped at 0 and detached; without them z0 = 0. Desirable:
    1 - sigmoid(beta * (ratio - z0)); undesirable: 1 - sigmoid(beta * (z0 - ratio)), each weighted.
    Returns (losses (B,) in input order, chosen_rewards, rejected_rewards, kl).
    """
    desirable = desirable.bool()
    ratio = policy_logps - ref_logps  # (B,)
    if policy_kl_logps is None:
        kl = ratio.new_zeros(())
    else:
        kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    losses = torch.where(desirable, good, bad)
    rewards = beta * ratio.detach()
    return losses, rewards[desirable], rewards[~desirable], kl


def preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, float]:
    """Batch means under TRL's metric names (paired losses: DPO family, ORPO, SimPO)."""
    with torch.no_grad():
        return {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "logps/chosen": chosen_logps.detach().mean().item(),
            "logps/rejected": rejected_logps.detach().mean().item(),
        }


def kto_metrics(
    chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, kl
) -> dict[str, float]:
    """KTO's metrics as TRL names them; a side absent from the batch is left out (and so is the margin)."""
    out = {"kl": float(kl)}
    with torch.no_grad():
        if chosen_rewards.numel():
            out["rewards/chosen"] = chosen_rewards.mean().item()
            out["logps/chosen"] = chosen_logps.mean().item()
        if rejected_rewards.numel():
            out["rewards/rejected"] = rejected_rewards.mean().item()
            out["logps/rejected"] = rejected_logps.mean().item()
    if chosen_rewards.numel() and rejected_rewards.numel():
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out
