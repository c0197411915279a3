"""data.balance through imbalanced-learn: counts after each sampler, where each applies, errors."""

import sys
from collections import Counter

import numpy as np
import pytest
import yaml

from tests.tiny import save_tiny_model
from tunesmith import load_config
from tunesmith.cli.main import main
from tunesmith.config.schema import BALANCE_CHOICES
from tunesmith.data.classification import LabelledExample
from tunesmith.data.resampling import RESAMPLERS, resample_examples, resample_features
from tunesmith.errors import ConfigError
from tunesmith.tasks.classify.modes import resolve

imblearn = pytest.importorskip("imblearn")


def _imbalanced(n_major=40, n_minor=10, seed=0):
    # two overlapping Gaussian blobs in 4-D: class 0 the majority, class 1 the minority
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n_major, 4)), rng.normal(1.5, 1, (n_minor, 4))])
    return x, np.array([0] * n_major + [1] * n_minor)


def test_every_config_choice_beyond_the_older_three_is_a_resampler():
    assert set(BALANCE_CHOICES) - {"none", "undersample", "oversample"} == set(RESAMPLERS)


@pytest.mark.parametrize("name", ["random_oversample", "rose", "smote"])
def test_oversamplers_bring_the_minority_to_the_majority_count(name):
    x, y = _imbalanced()
    xr, yr = resample_features(name, x, y, seed=0)
    assert Counter(yr.tolist()) == {0: 40, 1: 40}
    assert np.array_equal(xr[:50], x)  # imblearn keeps the originals first
    new = xr[50:]
    # random over-sampling only repeats points; ROSE and SMOTE make new ones
    repeats = all(any(np.array_equal(p, q) for q in x[40:]) for p in new)
    assert repeats == (name == "random_oversample")


def test_adasyn_adds_about_the_gap_as_imblearn_defines_it():
    x, y = _imbalanced()
    xr, yr = resample_features("adasyn", x, y, seed=0)
    _, expected = imblearn.over_sampling.ADASYN(random_state=0).fit_resample(x, y)
    assert Counter(yr.tolist()) == Counter(expected.tolist())
    assert Counter(yr.tolist())[0] == 40 and 35 <= Counter(yr.tolist())[1] <= 45


@pytest.mark.parametrize("name", ["random_undersample", "cluster_centroids"])
def test_undersamplers_cut_the_majority_to_the_minority_count(name):
    x, y = _imbalanced()
    xr, yr = resample_features(name, x, y, seed=0)
    assert Counter(yr.tolist()) == {0: 10, 1: 10}
    majority = xr[yr == 0]
    picked = all(any(np.array_equal(p, q) for q in x[:40]) for p in majority)
    assert picked == (name == "random_undersample")  # centroids are new points


@pytest.mark.parametrize(
    "name, cls",
    [
        ("tomek", "TomekLinks"),
        ("enn", "EditedNearestNeighbours"),
        ("renn", "RepeatedEditedNearestNeighbours"),
    ],
)
def test_cleaning_samplers_drop_majority_points_as_imblearn_does(name, cls):
    x, y = _imbalanced()
    xr, yr = resample_features(name, x, y, seed=0)
    ref_x, ref_y = getattr(imblearn.under_sampling, cls)().fit_resample(x, y)
    assert np.array_equal(xr, ref_x) and np.array_equal(yr, ref_y)
    counts = Counter(yr.tolist())
    assert counts[1] == 10 and counts[0] < 40  # overlapping blobs: some majority points go


def test_resample_examples_picks_texts_for_any_mode():
    examples = [LabelledExample(f"t{i}", "ham" if i < 12 else "spam") for i in range(15)]
    over = resample_examples("random_oversample", examples, seed=0)
    assert Counter(e.label for e in over) == {"ham": 12, "spam": 12}
    assert set(over) == set(examples)  # only repeats
    under = resample_examples("random_undersample", examples, seed=0)
    assert Counter(e.label for e in under) == {"ham": 3, "spam": 3}
    with pytest.raises(ConfigError, match="needs feature vectors"):
        resample_examples("smote", examples, seed=0)


def test_too_few_minority_examples_for_smote_is_a_config_error():
    x, y = _imbalanced(n_minor=3)
    with pytest.raises(ConfigError, match=r"data.balance=smote cannot re-sample .*class 1: 3"):
        resample_features("smote", x, y, seed=0)


def test_missing_imblearn_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "imblearn", None)
    monkeypatch.setitem(sys.modules, "imblearn.over_sampling", None)
    x, y = _imbalanced()
    with pytest.raises(ConfigError, match=r"pip install 'tunesmith\[classify\]'"):
        resample_features("smote", x, y, seed=0)


@pytest.mark.parametrize("mode", ["head", "prompt", "icl"])
def test_feature_space_samplers_outside_features_mode_name_the_mode(mode):
    with pytest.raises(ConfigError, match=f"task.mode=features only, not to task.mode={mode}"):
        load_config(None, ["task.type=classify", f"task.mode={mode}", "data.balance=smote"])
    cfg = load_config(
        None, ["task.type=classify", f"task.mode={mode}", "data.balance=random_oversample"]
    )
    resolve(cfg)  # picking texts works in every mode


def test_unknown_balance_lists_the_choices():
    with pytest.raises(ConfigError, match="data.balance must be one of none, undersample"):
        load_config(None, ["task.type=classify", "data.balance=smoot"])


@pytest.mark.parametrize(
    "balance, counts",
    [("smote", {"ham": 21, "spam": 21}), ("random_undersample", {"ham": 7, "spam": 7})],
)
def test_features_run_resamples_in_feature_space(tmp_path, cache_dir, capsys, balance, counts):
    model_dir = save_tiny_model(tmp_path / "tiny")
    lines = ["label,text"] + [
        f"{'spam' if i % 4 == 0 else 'ham'},{'win cash now' if i % 4 == 0 else 'see you'} {i}"
        for i in range(40)
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(tmp_path / "train.csv"), "max_length": 32, "balance": balance},
        "task": {"type": "classify", "mode": "features"},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    metrics = yaml.safe_load((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["resampled_train"] == counts  # 70 % of 30 ham / 10 spam: 21 / 7
    assert metrics["n"] == 8  # the test split is untouched
