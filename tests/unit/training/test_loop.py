import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.config.schema import TrainConfig
from tunesmith.data import encode_records
from tunesmith.errors import TrainingError
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.training import sft_objective, train
from tunesmith.training.checkpoint import find_checkpoint, read_position
from tunesmith.training.optim import lr_factor

OBJ = sft_objective(pad_id=0)


def _examples(n=24):
    recs = [
        {"instruction": f"count {i}", "output": "x" * (1 + i % 5), "_source": f"t:{i}"}
        for i in range(n)
    ]
    return encode_records(recs, tiny_tokenizer(), "auto", 64)[0]


def _model():
    return apply_method(tiny_llama(), LoraConfig(r=4, dropout=0.1, target_modules="all-linear"))


def _lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _cfg(**kw):
    base = dict(
        max_steps=8,
        batch_size=4,
        grad_accum=2,
        lr=5e-3,
        warmup_steps=2,
        scheduler="cosine",
        log_every=1,
        save_every=3,
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


def test_training_lowers_loss_and_writes_metrics(tmp_path):
    model, ex = _model(), _examples()
    result = train(model, ex, _cfg(max_steps=12), tmp_path, OBJ)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] and math.isfinite(result.final_loss)
    assert find_checkpoint(tmp_path) is not None


def _after_calls(model, n, action):
    """Forward hook on the final norm: from its n-th call on, `action(output)` replaces the output."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        return action(output) if calls["n"] >= n else output

    return model.model.norm.register_forward_hook(hook)


def _interrupt(output):
    raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_resume_after_interrupt_ends_with_identical_weights(tmp_path, optimizer, monkeypatch):
    monkeypatch.setattr(
        "tunesmith.training.optim8bit.MIN_8BIT_SIZE", 0
    )  # tiny LoRA tensors in 8 bits too
    cfg = _cfg(optimizer=optimizer)
    ex = _examples()
    torch.manual_seed(0)
    straight = _model()
    train(straight, ex, cfg, tmp_path / "a", OBJ)

    torch.manual_seed(0)
    first = _model()
    _after_calls(first, 2 * 4 + 1, _interrupt)  # dies in the first micro-batch of step 5
    with pytest.raises(KeyboardInterrupt):
        train(first, ex, cfg, tmp_path / "b", OBJ)
    position = read_position(tmp_path / "b/checkpoints/last")
    assert position["step"] == 4  # the interrupt saved the last finished step

    torch.manual_seed(123)  # as a new process: other init and RNG, all restored from the checkpoint
    resumed = _model()
    result = train(resumed, ex, cfg, tmp_path / "b", OBJ)
    assert result.resumed_from == 4
    for name, value in _lora_state(straight).items():
        torch.testing.assert_close(_lora_state(resumed)[name], value, atol=0, rtol=0)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 9))  # no duplicated metric lines after resume


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
    model, ex = _model(), _examples()
    _after_calls(model, 2 * 3 + 1, lambda out: out * float("nan"))  # step 4 produces NaN
    with pytest.raises(TrainingError, match="loss became nan at step 4"):
        train(model, ex, _cfg(max_steps=6), tmp_path, OBJ)
    position = read_position(tmp_path / "checkpoints/last")
    saved = load_file(str(tmp_path / "checkpoints/last/trainable.safetensors"))
    assert position["step"] == 3
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    ex = _examples(8)
    a, b = tiny_llama(), tiny_llama()
    for m in (a, b):
        apply_method(m, LoraConfig(r=2, target_modules="all-linear"))
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
    train(a, ex, _cfg(max_steps=1, batch_size=8, grad_accum=1, save_every=0), tmp_path / "a", OBJ)
    train(
        b,
        ex,
        _cfg(max_steps=1, batch_size=2, grad_accum=4, save_every=0, seed=7),
        tmp_path / "b",
        OBJ,
    )
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_schedule_shapes():
    assert lr_factor(0, 10, 2, "linear") == 0.5 and lr_factor(1, 10, 2, "linear") == 1.0
    assert lr_factor(10, 10, 2, "linear") == 0.0
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 0, "constant") == 1.0


def test_the_loop_runs_method_step_hooks_and_reports(tmp_path):
    """Sparse pruning happens through the loop itself, whatever task drives it."""
    from tunesmith.methods.sparse import SparseConfig

    model = apply_method(
        tiny_llama(), SparseConfig(target_modules=["q_proj"], sparsity=0.5, rounds=1, prune_every=1)
    )
    result = train(model, _examples(), _cfg(max_steps=2, grad_accum=1), tmp_path, OBJ)
    assert result.method_metrics["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_final_loss_is_the_mean_of_the_last_logging_window(tmp_path):
    result = train(_model(), _examples(), _cfg(max_steps=6, log_every=3), tmp_path, OBJ)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [3, 6]
    assert result.final_loss == pytest.approx(records[-1]["loss"])
    assert result.last_step_loss != result.final_loss


def _on_policy_objective(calls):
    """An objective that, like PPO, draws a 'rollout' (random row weights) from the step's batch
    and takes 2 epochs x 2 minibatch updates on it."""

    def updates(model, batches):
        calls.append(model.training)
        batch = batches[0]
        weights = torch.rand(batch["input_ids"].shape[0])  # the RNG a sampler would use
        halves = [slice(0, 2), slice(2, 4)]
        minibatches = [{k: v[h] for k, v in batch.items()} | {"w": weights[h]} for h in halves]
        return [[mb] for _ in range(2) for mb in minibatches]

    def loss(model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return (out.logits.float().mean(-1).mean(-1) * batch["w"]).mean(), 1

    return dataclasses.replace(OBJ, loss=loss, updates=updates, updates_per_step=4)


def test_an_on_policy_step_takes_its_planned_updates_and_resumes_exactly(tmp_path):
    cfg = _cfg(grad_accum=1, max_steps=6, save_every=1)
    ex = _examples()
    calls = []
    torch.manual_seed(0)
    straight = _model()
    result = train(straight, ex, cfg, tmp_path / "a", _on_policy_objective(calls))
    assert result.steps == 6 and calls == [False] * 6  # rollouts run in eval mode
    state = json.loads((tmp_path / "a/checkpoints/last/state.json").read_text())
    assert state["scheduler"]["last_epoch"] == 24  # 4 optimizer updates per step

    torch.manual_seed(0)
    first = _model()
    _after_calls(first, 4 * 3 + 2, _interrupt)  # inside step 4, after its first update
    with pytest.raises(KeyboardInterrupt):
        train(first, ex, cfg, tmp_path / "b", _on_policy_objective([]))
    assert read_position(tmp_path / "b/checkpoints/last")["step"] == 3  # not the half-done step 4
    torch.manual_seed(123)
    resumed = _model()
    train(resumed, ex, cfg, tmp_path / "b", _on_policy_objective([]))
    for name, value in _lora_state(straight).items():
        torch.testing.assert_close(_lora_state(resumed)[name], value, atol=0, rtol=0)


def test_a_finished_run_trained_again_reports_its_totals(tmp_path):
    first = train(_model(), _examples(), _cfg(), tmp_path, OBJ)
    again = train(_model(), _examples(), _cfg(), tmp_path, OBJ)  # resumes at the last step
    assert again.resumed_from == first.steps == 8
    assert (again.final_loss, again.last_step_loss, again.tokens) == (
        first.final_loss,
        first.last_step_loss,
        first.tokens,
    )
    assert again.seconds == first.seconds > 0 and math.isfinite(again.final_loss)


def test_a_resumed_run_counts_the_tokens_of_both_sessions(tmp_path):
    straight = train(_model(), _examples(), _cfg(), tmp_path / "a", OBJ)
    model = _model()
    _after_calls(model, 2 * 4 + 1, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(model, _examples(), _cfg(), tmp_path / "b", OBJ)
    resumed = train(_model(), _examples(), _cfg(), tmp_path / "b", OBJ)
    assert resumed.tokens == straight.tokens and resumed.seconds > 0
