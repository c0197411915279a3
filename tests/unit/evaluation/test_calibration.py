"""ECE against a hand-computed case; temperature scaling recovers a known temperature."""

import numpy as np
import pytest
import torch

from tunesmith.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    log_probs,
    nll,
)


def test_ece_matches_a_hand_computed_example():
    # confidences 0.9, 0.9 (bin 14: (13/15, 14/15]), 0.6 (bin 9), 0.55 (bin 9); correct: 1, 0, 1, 1
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    labels = [0, 0, 0, 1]
    # bin of 0.9: accuracy 1/2, confidence 0.9 -> 2/4 * 0.4; bin of 0.6/0.55: accuracy 1,
    # confidence 0.575 -> 2/4 * 0.425
    expected = 0.5 * 0.4 + 0.5 * 0.425
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_equals_accuracy_and_bins_are_right_closed():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, [0, 1]) == 0.0
    # 1/15 exactly belongs to the first bin ((0, 1/15]), so a single example is |0 - 1/15|
    three = np.array([[1 / 15, 7 / 15, 7 / 15]])
    assert expected_calibration_error(three, [0]) == pytest.approx(7 / 15 - 0)


def test_fitted_temperature_recovers_a_known_temperature():
    torch.manual_seed(0)
    n, k, true_t = 20000, 4, 2.5
    z = torch.randn(n, k) * 3  # (N, K) the calibrated logits
    labels = torch.multinomial(torch.softmax(z, -1), 1).squeeze(1)  # drawn from softmax(z)
    overconfident = z * true_t  # what an overconfident model reports: softmax(z * T)
    fitted = fit_temperature(overconfident, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert nll(overconfident, labels, fitted) < nll(overconfident, labels)


def test_temperature_keeps_predictions_and_log_probs_act_as_logits():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    softer = apply_temperature(probs, 2.0)
    assert (softer.argmax(1) == probs.argmax(1)).all() and softer.max() < probs.max()
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-5)
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    from_probs = apply_temperature(torch.softmax(logits, -1).numpy(), 3.0)
    np.testing.assert_allclose(from_probs, torch.softmax(logits / 3.0, -1).numpy(), rtol=1e-5)
    assert log_probs(np.array([[1.0, 0.0]])).isfinite().all()
