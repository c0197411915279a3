import random

import pytest

from tunesmith.evaluation.classification import (
    classification_metrics,
    confusion_matrix,
    plot_confusion,
)


def test_metrics_match_scikit_learn():
    metrics_mod = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    y_true = [rng.randrange(3) for _ in range(200)]
    y_pred = [y if rng.random() < 0.7 else rng.randrange(3) for y in y_true]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(metrics_mod.accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(metrics_mod.f1_score(y_true, y_pred, average="macro"))
    precision = metrics_mod.precision_score(y_true, y_pred, average=None)
    recall = metrics_mod.recall_score(y_true, y_pred, average=None)
    for i, name in enumerate("abc"):
        assert m["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert m["per_class"][name]["recall"] == pytest.approx(recall[i])
    assert m["confusion"] == metrics_mod.confusion_matrix(y_true, y_pred).tolist() and m["n"] == 200


def test_never_predicted_class_has_zero_precision_and_png_is_written(tmp_path):
    m = classification_metrics([0, 1, 1], [1, 1, 1], ["ham", "spam"])
    assert m["per_class"]["ham"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((0 + 0.8) / 2)
    assert confusion_matrix([0, 1, 1], [1, 1, 1], 2).tolist() == [[0, 1], [0, 2]]
    path = plot_confusion(m["confusion"], ["ham", "spam"], tmp_path / "c.png", "test")
    assert path.read_bytes()[:4] == b"\x89PNG"
