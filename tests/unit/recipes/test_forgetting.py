"""Forgetting: general-text perplexity before/after, replay mixing, L2-SP/EWC penalties and LwF."""

import json
import math

import pytest
import torch

import tunesmith
from tests.tiny import save_tiny_model
from tunesmith.errors import ConfigError
from tunesmith.recipes import forgetting, sft
from tunesmith.recipes.common import build_model


@pytest.fixture
def files(tmp_path, cache_dir):
    rows = [{"instruction": f"say {w}", "output": f"{w}!"} for w in ("ab", "cd", "ef", "gh") * 5]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    general = [f"the {w} sat on the mat near {w}." for w in ("cat", "dog", "fox", "owl") * 3]
    (tmp_path / "general.txt").write_text("\n\n".join(general) + "\n")
    return save_tiny_model(tmp_path / "tiny"), tmp_path / "task.jsonl", tmp_path / "general.txt"


def _cfg(files, tmp_path, *overrides):
    model, task, general = files
    return tunesmith.load_config(
        None,
        [
            f"model.name={model}",
            f"data.train={task}",
            "data.max_length=48",
            "method.name=full",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.lr=1e-2",
            "train.precision=fp32",
            "eval.limit=2",
            "eval.max_new_tokens=2",
            f"output.dir={tmp_path / 'out'}",
            *overrides,
        ],
    )


def test_a_run_reports_general_perplexity_before_and_after(files, tmp_path):
    general = files[2]
    metrics = sft.run(_cfg(files, tmp_path, f"eval.general_data={general}"))
    before, after = metrics["general_perplexity_before"], metrics["general_perplexity_after"]
    assert before != after and metrics["general_perplexity_ratio"] == pytest.approx(after / before)
    assert metrics["general_texts"] == 12
    saved = json.loads((tmp_path / "out/metrics.json").read_text())
    assert saved["general_perplexity_before"] == before
    from tunesmith.tasks import EvalRequest, get_task

    base = get_task("sft").evaluate(
        _cfg(files, tmp_path, f"eval.general_data={general}"), EvalRequest(base_only=True)
    )
    assert base["general_perplexity"] == pytest.approx(before, rel=1e-6)


def test_replay_makes_up_the_configured_share_of_the_training_set(files, tmp_path):
    cfg = _cfg(files, tmp_path, f"data.replay={files[2]}", "data.replay_ratio=0.25")
    _, tokenizer = build_model(cfg)
    task = [object()] * 30
    mixed = forgetting.mix_replay(task, cfg.data, tokenizer, seed=0)
    replayed = [e for e in mixed if e not in task]
    assert len(replayed) == 10 and len(replayed) / len(mixed) == pytest.approx(0.25)
    again = forgetting.mix_replay(task, cfg.data, tokenizer, seed=0)
    assert [e.input_ids for e in again[30:]] == [e.input_ids for e in replayed]  # seeded
    assert all(e.labels == e.input_ids for e in replayed)  # plain text: every token a target


def test_replay_needs_its_ratio(files, tmp_path):
    with pytest.raises(ConfigError, match="go together"):
        _cfg(files, tmp_path, f"data.replay={files[2]}")


def _anchor(files, tmp_path, l2sp, ewc):
    cfg = _cfg(files, tmp_path)
    model, tokenizer = build_model(cfg)
    general = forgetting.read_general_text(str(files[2]), tokenizer, 4, 48)
    fisher = forgetting.diagonal_fisher(model, general, tokenizer.pad_token_id) if ewc else None
    return model, forgetting.StartAnchor(model, l2sp, ewc, fisher)


@pytest.mark.parametrize("l2sp, ewc", [(0.5, 0.0), (0.0, 3.0), (0.5, 3.0)])
def test_the_start_penalty_is_zero_at_the_start_and_its_gradient_is_closed_form(
    files, tmp_path, l2sp, ewc
):
    model, anchor = _anchor(files, tmp_path, l2sp, ewc)
    assert float(anchor.penalty()) == 0.0
    with torch.no_grad():
        for p in anchor.params.values():
            p.add_(0.01 * torch.randn_like(p))
    model.zero_grad()
    anchor.penalty().backward()
    for name, p in anchor.params.items():
        delta = p.detach() - anchor.start[name]
        weight = l2sp + (ewc * anchor.fisher[name] if ewc else 0.0)
        assert torch.allclose(p.grad, weight * delta, atol=1e-6), name


def test_the_fisher_is_the_mean_squared_gradient(files, tmp_path):
    cfg = _cfg(files, tmp_path)
    model, tokenizer = build_model(cfg)
    texts = forgetting.read_general_text(str(files[2]), tokenizer, 2, 48)
    fisher = forgetting.diagonal_fisher(model, texts, tokenizer.pad_token_id)
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind
    name = "model.layers.0.mlp.down_proj.weight"
    squares = []
    for text in texts:
        model.zero_grad()
        batch = forgetting.collate([text], tokenizer.pad_token_id)
        loss, _ = forgetting.causal_lm_loss(model, **batch)
        loss.backward()
        squares.append(dict(model.named_parameters())[name].grad.pow(2))
    assert torch.allclose(fisher[name], (squares[0] + squares[1]) / 2, atol=1e-10)
    assert float(fisher[name].sum()) > 0


def test_a_strong_start_penalty_keeps_the_weights_near_the_start(files, tmp_path):
    def moved(name, *overrides):
        cfg = _cfg(files, tmp_path / name, *overrides)
        metrics = sft.run(cfg)
        model, _ = build_model(cfg)  # the start again
        trained, _ = tunesmith.load_model(str(files[0]), adapter=str(tmp_path / name / "out"))
        start = dict(model.named_parameters())
        change = sum(float((p - start[n]).pow(2).sum()) for n, p in trained.named_parameters())
        return change, metrics

    free, _ = moved("free")
    held, metrics = moved(
        "held", f"eval.general_data={files[2]}", "train.ewc_lambda=1e4", "train.l2sp_lambda=1e3"
    )
    assert held < 0.5 * free
    log = (tmp_path / "held/out/metrics.jsonl").read_text()
    assert "start_penalty" in log


def test_ewc_without_general_text_is_a_config_error(files, tmp_path):
    with pytest.raises(ConfigError, match="needs general text"):
        sft.run(_cfg(files, tmp_path, "train.ewc_lambda=1.0"))


@pytest.mark.parametrize("method", [["method.name=full"], ["method.name=lora", "method.r=2"]])
def test_lwf_is_zero_at_the_start_and_grows_as_the_model_moves(files, tmp_path, method):
    cfg = _cfg(files, tmp_path, *method)
    model, tokenizer = build_model(cfg)
    from tunesmith.data import collate, load_splits

    batch = collate(load_splits(cfg.data, tokenizer, 0).train[:4], tokenizer.pad_token_id)
    assert abs(float(forgetting.lwf_divergence(model, batch))) < 1e-6
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    assert float(forgetting.lwf_divergence(model, batch)) > 1e-3
    metrics = sft.run(_cfg(files, tmp_path, *method, "train.lwf_lambda=1.0", "train.log_every=1"))
    assert math.isfinite(metrics["train_loss"])
    assert "lwf_kl" in (tmp_path / "out/metrics.jsonl").read_text()
