"""Classification that learns well by default: the head's own learning rate, keep-best on
validation accuracy, label smoothing, calibration (ECE, temperature scaling) and the head mode's
measured defaults, on a tiny model directory."""

import json

import numpy as np
import pytest
import torch

from tests.tiny import tiny_llama
from tests.unit.recipes.test_classify import _cfg, task  # noqa: F401  (the fixture)
from tunesmith import load_config
from tunesmith.config.schema import TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.evaluation.calibration import apply_temperature
from tunesmith.models.heads import SequenceClassifier
from tunesmith.objectives.classification import weighted_cross_entropy
from tunesmith.recipes import classify
from tunesmith.tasks.classify.modes.head import DEFAULT_METHOD, head_lr_scale
from tunesmith.training.optim import build_optimizer


def test_the_head_of_a_sequence_classifier_gets_its_own_rate():
    model = SequenceClassifier(tiny_llama(), 2, "last")
    opt = build_optimizer(dict(model.named_parameters()), TrainConfig(lr=1e-4), head_lr_scale(10))
    head = {id(p) for p in model.head.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # a group is all head or all body
        assert group["lr"] == pytest.approx(1e-3 if in_head == {True} else 1e-4)


def test_label_smoothing_matches_the_closed_form():
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    logp = torch.log_softmax(logits, -1)[0]
    expected = -(0.95 * logp[0] + 0.05 * logp[1])  # eps 0.1 over K=2 classes: 0.05 each
    loss, n = weighted_cross_entropy(logits, labels, label_smoothing=0.1)
    assert n == 1 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(None, ["task.type=classify", "task.label_smoothing=1.5"])


def test_run_keeps_the_best_epoch_reports_ece_and_calibrates(task, tmp_path):  # noqa: F811
    cfg = _cfg(
        task,
        tmp_path,
        "task.trainable=last_block",
        "task.head_lr_multiplier=5",
        "task.label_smoothing=0.1",
        "train.keep_best=true",
        "train.best_metric=eval_accuracy",
    )
    metrics = classify.run(cfg)
    out = tmp_path / "out"
    assert 1 <= metrics["best_step"] <= metrics["steps"] and "stopped_early" in metrics
    assert 0 <= metrics["test_ece"] <= 1 and "ece_uncalibrated" in metrics
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["temperature"] > 0 and saved["applied"] == (
        saved["val_nll_calibrated"] < saved["val_nll"] and saved["validation_errors"] > 0
    )
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_accuracy" in r for r in evals) == 3  # one per epoch
    # tunesmith classify returns the temperature-scaled probability when it was kept
    ((label, prob),) = classify.classify_texts(str(out), ["abc A"])
    inner = classify.load_predictor(cfg)
    raw = getattr(inner, "inner", inner).predict_proba([classify.LabelledExample("abc A", "")])
    scaled = apply_temperature(raw, saved["temperature"]) if saved["applied"] else raw
    assert prob == pytest.approx(float(scaled.max()), rel=1e-5)


def test_a_stale_calibration_of_an_earlier_run_is_removed(task, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "calibration.json").write_text(json.dumps({"temperature": 9.0, "applied": True}))
    cfg = _cfg(task, tmp_path, "task.trainable=head", "task.temperature_scaling=false")
    metrics = classify.run(cfg)
    assert not (out / "calibration.json").exists() and "temperature" not in metrics


def test_head_mode_defaults_fill_only_unset_keys():
    cfg = load_config(None, ["task.type=classify"])
    assert cfg.task.trainable == "method" and cfg.method.name == "lora"
    assert cfg.method.r == DEFAULT_METHOD["r"] and cfg.method.target_modules == "all-linear"
    assert cfg.train.lr == 1e-3 and cfg.train.keep_best and cfg.train.best_metric == "eval_accuracy"
    assert cfg.data.group_by_length
    own = load_config(
        None,
        ["task.type=classify", "train.lr=5e-5", "task.trainable=last_block"]
        + ["data.group_by_length=false"],
    )
    assert own.train.lr == 5e-5 and own.task.trainable == "last_block"
    assert not own.data.group_by_length
    assert own.method.name == "lora" and own.method.target_modules != "all-linear"  # untouched
    rank = load_config(None, ["task.type=classify", "method.r=32"])  # LoRA's other keys stay
    assert rank.method.r == 32 and rank.method.target_modules == "all-linear"
    named = load_config(None, ["task.type=classify", "method.name=lora", "method.alpha=8"])
    assert named.method.alpha == 8 and named.method.target_modules == "all-linear"
    ia3 = load_config(None, ["task.type=classify", "method.name=ia3"])
    assert ia3.method.name == "ia3" and ia3.task.trainable == "method"
    # other modes and tasks keep the schema defaults
    features = load_config(None, ["task.type=classify", "task.mode=features"])
    assert features.train.lr == TrainConfig.lr and not features.train.keep_best
    assert not features.data.group_by_length
    assert load_config(None, []).train.lr == TrainConfig.lr


def test_ece_in_metrics_is_computed_from_the_probabilities():
    class Fixed:
        labels = ["neg", "pos"]

        def predict_proba(self, examples):
            return np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)

    examples = [classify.LabelledExample("a", "neg"), classify.LabelledExample("b", "neg")]
    metrics = classify.score(Fixed(), examples)
    # bins of 0.8 and 0.7: |1 - 0.8| / 2 + |0 - 0.7| / 2
    assert metrics["ece"] == pytest.approx(0.45) and metrics["accuracy"] == 0.5


def test_temperature_is_not_applied_when_validation_has_no_error(tmp_path):
    labels = ["neg", "pos"]
    val = [classify.LabelledExample("a", "neg"), classify.LabelledExample("b", "pos")]
    cfg = load_config(None, ["task.type=classify"])
    perfect = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    metrics = {}
    assert classify._calibrate(cfg, tmp_path, perfect, val, labels, metrics) is None
    assert metrics["temperature"] == 1.0 and metrics["val_nll_calibrated"] == metrics["val_nll"]
    assert not json.loads((tmp_path / "calibration.json").read_text())["applied"]
    overconfident = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99]], dtype=np.float32)
    val3 = [*val, classify.LabelledExample("c", "pos")]
    fitted = classify._calibrate(cfg, tmp_path, overconfident, val3, labels, {})
    assert fitted is not None and fitted > 1  # one confident error: softened
