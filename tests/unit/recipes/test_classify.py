"""Every classification mode end to end on a tiny model directory and a separable toy task."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import save_tiny_model, tiny_bert, tiny_encoder_tokenizer
from tunesmith import load_config
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.recipes import classify
from tunesmith.tasks.classify.modes import features as feature_mode
from tunesmith.tasks.classify.modes import resolve

BLOCK = (
    (16 * 16 + 16 * 8 + 16 * 8 + 16 * 16) + 3 * 16 * 32 + 2 * 16
)  # attention, SwiGLU MLP, two norms
HEAD = 16 * 2 + 2


@pytest.fixture
def task(tmp_path, cache_dir):
    """(model dir, data file): the label is the text's last character, so the last token decides."""
    rng = random.Random(0)
    rows = []
    for i in range(60):
        label = "pos" if i % 3 else "neg"
        body = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(4, 12)))
        rows.append({"text": body + (" A" if label == "pos" else " B"), "label": label})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return save_tiny_model(tmp_path / "tiny"), tmp_path / "data.jsonl"


def _cfg(task, tmp_path, *overrides):
    model_dir, data = task
    base = [
        f"model.name={model_dir}",
        f"data.train={data}",
        "data.max_length=32",
        "task.type=classify",
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=1e-2",
        "train.log_every=5",
        "eval.batch_size=8",
        "task.label_words={pos: A, neg: B}",
        "task.template={text} is{answer}",
        f"output.dir={tmp_path / 'out'}",
    ]
    return load_config(None, [*base, *overrides])


@pytest.mark.parametrize(
    "trainable, expected",
    [
        ("head", HEAD),
        ("last_block", BLOCK + 16 + HEAD),
        ("last_two_blocks", 2 * BLOCK + 16 + HEAD),
        ("all", 128 * 16 + 2 * BLOCK + 16 + HEAD),
        ("method", 2 * (2 * 16 + 16 * 2 + 2 * 16 + 8 * 2) + HEAD),
    ],
)
def test_head_mode_trains_what_task_trainable_names(task, tmp_path, trainable, expected):
    lora = ["method.name=lora", "method.r=2", "method.target_modules=[q_proj, v_proj]"]
    method = lora if trainable == "method" else []
    cfg = _cfg(task, tmp_path, f"task.trainable={trainable}", *method)
    metrics = classify.run(cfg)
    assert metrics["trainable_params"] == expected
    assert {
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion",
        "train_accuracy",
        "val_accuracy",
        "test_accuracy",
        "train_seconds",
    } <= set(metrics)
    saved = load_file(str(tmp_path / "out/classifier.safetensors"))
    assert sum(t.numel() for t in saved.values()) == expected
    assert (tmp_path / "out/confusion.png").is_file()


def test_head_only_learns_and_the_saved_classifier_predicts_the_same(task, tmp_path):
    cfg = _cfg(task, tmp_path, "task.trainable=head", "train.epochs=8", "train.lr=5e-2")
    metrics = classify.run(cfg)
    assert metrics["train_accuracy"] >= 0.9
    again = classify.evaluate(cfg, "test")
    assert (
        again["accuracy"] == metrics["accuracy"]
        and json.loads((tmp_path / "out/metrics.json").read_text())["split"] == "test"
    )
    ((label, prob),) = classify.classify_texts(str(tmp_path / "out"), ["abc A"])
    assert label in ("pos", "neg") and 0.5 <= prob <= 1


def test_frozen_prefix_cache_trains_exactly_like_the_full_forward(task, tmp_path):
    heads = []
    for cache in ("true", "false"):
        classify.run(
            _cfg(
                task,
                tmp_path / cache,
                "task.trainable=last_block",
                f"task.cache_frozen={cache}",
                f"output.dir={tmp_path / cache}",
            )
        )
        heads.append(load_file(str(tmp_path / cache / "classifier.safetensors")))
    for name, tensor in heads[0].items():
        torch.testing.assert_close(tensor, heads[1][name], atol=1e-5, rtol=1e-4)


def test_class_weights_and_oversampling_run(task, tmp_path):
    metrics = classify.run(
        _cfg(
            task,
            tmp_path,
            "task.trainable=head",
            "task.class_weights=true",
            "data.balance=oversample",
        )
    )
    assert (
        metrics["steps"] == 3 * 7
    )  # train split 28 pos + 14 neg -> 2 x 28 after oversampling, batches of 8


def test_untrained_head_is_refused(task, tmp_path):
    with pytest.raises(
        ConfigError, match="task.trainable=none would leave the classification head random"
    ):
        classify.run(_cfg(task, tmp_path, "task.trainable=none"))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_feature_mode_fits_and_reuses_cached_embeddings(task, tmp_path, cache_dir, pooling):
    pytest.importorskip("sklearn")
    cfg = _cfg(task, tmp_path, "task.mode=features", f"task.pooling={pooling}", "features.layer=1")
    first = classify.run(cfg)
    assert first["embeddings_from_cache"] is False and list(
        (cache_dir / "embeddings").glob("*.npy")
    )
    second = classify.run(cfg)
    assert (
        second["embeddings_from_cache"] is True
        and second["test_accuracy"] == first["test_accuracy"]
    )
    assert classify.evaluate(cfg)["accuracy"] == first["accuracy"]


@pytest.mark.parametrize("demos", ["none", "random", "similar"])
def test_prompt_mode_zero_shot_and_fine_tuned_with_demonstrations(task, tmp_path, demos):
    zero = classify.run(
        _cfg(
            task,
            tmp_path,
            "task.mode=prompt",
            "task.trainable=none",
            f"prompt.demonstrations={demos}",
        )
    )
    assert zero["trainable_params"] == 0 and "train_accuracy" not in zero
    assert not (tmp_path / "out/classifier.safetensors").exists()
    cfg = _cfg(
        task,
        tmp_path,
        "task.mode=prompt",
        "task.trainable=last_block",
        f"prompt.demonstrations={demos}",
        f"output.dir={tmp_path / 'tuned'}",
    )
    tuned = classify.run(cfg)
    assert tuned["trainable_params"] == BLOCK + 16 and tuned["steps"] > 0
    assert (
        classify.evaluate(cfg)["accuracy"] == tuned["accuracy"]
    )  # reloaded weights, same demonstrations


def test_prompt_mode_has_no_head_to_train(task, tmp_path):
    with pytest.raises(ConfigError, match="no classification head"):
        classify.run(_cfg(task, tmp_path, "task.mode=prompt", "task.trainable=head"))


@pytest.mark.parametrize("selection", ["random", "similar", "vote_k", "mdl"])
def test_icl_strategies(task, tmp_path, selection):
    metrics = classify.run(
        _cfg(
            task,
            tmp_path,
            "task.mode=icl",
            f"icl.selection={selection}",
            "icl.shots=2",
            "icl.pool=4",
            "icl.candidates=3",
        )
    )
    assert metrics["selection"] == selection and 0 <= metrics["test_accuracy"] <= 1
    assert np.isclose(sum(metrics["confusion"][0]) + sum(metrics["confusion"][1]), metrics["n"])


def test_encoder_reads_first_token_and_scores_masked_label_words(task, tmp_path):
    encoder = save_tiny_model(tmp_path / "bert", tiny_bert(), tiny_encoder_tokenizer())
    head = classify.run(_cfg(task, tmp_path, f"model.name={encoder}", "task.trainable=last_block"))
    assert (
        head["trainable_params"]
        == sum(p.numel() for p in tiny_bert().bert.encoder.layer[-1].parameters()) + HEAD
    )
    prompt = classify.run(
        _cfg(
            task,
            tmp_path,
            f"model.name={encoder}",
            "task.mode=prompt",
            "task.trainable=none",
            f"output.dir={tmp_path / 'p'}",
        )
    )
    assert 0 <= prompt["test_accuracy"] <= 1


def test_sparse_pruning_happens_in_a_classification_run_with_a_method(task, tmp_path):
    cfg = _cfg(
        task,
        tmp_path,
        "task.trainable=method",
        "method.name=sparse",
        "method.target_modules=[q_proj, v_proj]",
        "method.sparsity=0.5",
        "method.rounds=2",
        "method.prune_every=2",
        "train.max_steps=5",
    )
    metrics = classify.run(cfg)
    assert metrics["steps"] == 5 and metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    kept = (
        2 * (16 * 16 + 8 * 16) // 2
    )  # half of q_proj (16 -> 16) and v_proj (16 -> 8) in each of 2 blocks
    assert abs(metrics["effective_trainable_params"] - kept) <= 2


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["task.trainable=last_block", "method.name=sparse"],
            "method.name=sparse is set but task.trainable=last_block trains the last block; set task.trainable=method",
        ),
        (["task.trainable=head", "method.r=4"], "method.name=lora is set but task.trainable=head"),
        (
            ["task.mode=features", "method.name=ia3"],
            "method.name=ia3 is set but task.mode=features trains no model",
        ),
        (
            ["task.mode=icl", "method.name=lora", "method.r=4"],
            "task.mode=icl trains no model weights",
        ),
    ],
)
def test_a_method_section_the_run_would_not_use_is_an_error(task, tmp_path, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        classify.run(_cfg(task, tmp_path, *overrides))


def test_older_flat_keys_fill_the_mode_sections(task, tmp_path):
    cfg = _cfg(task, tmp_path, "task.mode=icl", "task.icl_shots=2", "task.icl_selection=similar")
    metrics = classify.run(cfg)
    assert (cfg.icl.shots, cfg.icl.selection, cfg.task.icl_shots) == (2, "similar", None)
    assert metrics["shots"] == 2 and metrics["selection"] == "similar"
    saved = load_config(str(tmp_path / "out/config.yaml"))
    assert saved.icl == cfg.icl and saved.task.icl_shots is None
    same = _cfg(task, tmp_path, "task.mode=features", "task.feature_c=0.5", "features.c=0.5")
    resolve(same)
    assert same.features.c == 0.5
    with pytest.raises(ConfigError, match="task.feature_c=0.5 and features.c=2.0 disagree"):
        classify.run(
            _cfg(task, tmp_path, "task.mode=features", "task.feature_c=0.5", "features.c=2")
        )
    with pytest.raises(ConfigError, match="prompt.demonstrations must be one of"):
        classify.run(_cfg(task, tmp_path, "task.mode=prompt", "task.demonstrations=all"))


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_feature_classifier_is_stored_as_parameters_and_predicts_identically(tmp_path, kind):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 12)), np.arange(60) % 3
    x[:, 0] += 2 * y
    cfg = load_config(
        None, ["task.type=classify", "task.mode=features", f"features.classifier={kind}"]
    )
    fitted = feature_mode.build_classifier(cfg).fit(x, y)
    feature_mode.save_classifier(fitted, tmp_path)
    loaded = feature_mode.load_classifier(tmp_path)
    assert np.array_equal(loaded.predict_proba(x), fitted.predict_proba(x))
    assert np.array_equal(loaded.predict(x), fitted.predict(x))
    assert not list(tmp_path.glob("*.pkl"))


def test_a_damaged_feature_classifier_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("sklearn")
    from safetensors.numpy import load_file, save_file

    x, y = np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2
    cfg = load_config(None, ["task.type=classify", "task.mode=features"])
    feature_mode.save_classifier(feature_mode.build_classifier(cfg).fit(x, y), tmp_path)
    arrays = load_file(str(tmp_path / feature_mode.ARRAYS_FILE))
    save_file(
        {**arrays, "coef": arrays["coef"][:, :3].copy()}, str(tmp_path / feature_mode.ARRAYS_FILE)
    )
    with pytest.raises(CheckpointError, match=r"coef has shape \(1, 3\), expected \(1, 4\)"):
        feature_mode.load_classifier(tmp_path)
    save_file(
        {k: v for k, v in arrays.items() if k != "intercept"},
        str(tmp_path / feature_mode.ARRAYS_FILE),
    )
    with pytest.raises(CheckpointError, match="missing intercept"):
        feature_mode.load_classifier(tmp_path)
    (tmp_path / feature_mode.ARRAYS_FILE).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="damaged"):
        feature_mode.load_classifier(tmp_path)


def test_no_pickle_in_the_package():
    from pathlib import Path

    import tunesmith

    root = Path(tunesmith.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "import pickle" in p.read_text() or "pickle.load" in p.read_text()
    ]
    assert not offenders
