"""Calibration of predicted class probabilities: expected calibration error, temperature scaling.

ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the predictions are put in 15
equal-width bins of confidence (the top probability; bin m holds confidences in ((m-1)/15, m/15]),
and ECE = sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|.

Temperature scaling divides the logits by one scalar T > 0, fitted by LBFGS on the negative
log-likelihood of a held-out split. It changes no prediction (the argmax stays), only confidences.
Log-probabilities serve as logits: softmax(log p / T) = softmax(z / T) for p = softmax(z).
"""

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, labels, bins: int = ECE_BINS) -> float:
    """ECE of probs (N, K) against integer labels (N,), with `bins` equal-width confidence bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(1)  # (N,)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    # bin m (1-based) holds ((m-1)/bins, m/bins]; a confidence of exactly 0 joins the first bin
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for m in range(bins):
        in_bin = index == m
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def log_probs(probs: np.ndarray) -> torch.Tensor:
    """Probabilities (N, K) -> log-probabilities as float64 logits (zeros clamped)."""
    return torch.from_numpy(np.asarray(probs, dtype=np.float64)).clamp_min(1e-12).log()


def nll(logits: torch.Tensor, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels under softmax(logits / temperature)."""
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(F.cross_entropy(logits.double() / temperature, target))


def fit_temperature(logits: torch.Tensor, labels, steps: int = 50) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits (N, K), labels (N,)).

    Optimised over log T (so T stays positive) with LBFGS, from T = 1."""
    z = logits.detach().double()
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """probs (N, K) recomputed as softmax(log probs / temperature), float32."""
    return torch.softmax(log_probs(probs) / temperature, -1).numpy().astype(np.float32)
