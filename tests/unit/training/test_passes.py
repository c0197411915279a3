"""train.tokens_per_pass: a micro-batch run as several passes gives the update of the whole one;
objectives that couple a batch's examples always run whole; train.activation_checkpointing: auto
is the task's choice."""

import dataclasses

import pytest
import torch

from tests.tiny import tiny_llama
from tests.unit.training.test_loop import OBJ, _cfg, _examples
from tunesmith import load_config
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method
from tunesmith.methods.lora import LoraConfig
from tunesmith.training import train
from tunesmith.training.passes import passes_needed, split_examples


def test_passes_needed_and_chunks():
    assert passes_needed(100, 4, 0) == 1  # 0: never split
    assert passes_needed(100, 4, 100) == 1
    assert passes_needed(101, 4, 100) == 2
    assert passes_needed(10_000, 3, 10) == 3  # never more passes than examples
    assert split_examples([5, 6, 7, 8, 9], 2) == [[5, 6, 7], [8, 9]]
    assert split_examples([1, 2], 2) == [[1], [2]]


def _seeded_lora_model():
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules="all-linear"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
    return model


def _counting(objective, calls: list):
    def collate(items):
        calls.append(len(items))
        return objective.collate(items)

    return dataclasses.replace(objective, collate=collate)


def test_split_passes_give_the_whole_micro_batch_update(tmp_path):
    ex = _examples(8)
    whole, split = _seeded_lora_model(), _seeded_lora_model()
    cfg = dict(max_steps=2, batch_size=8, grad_accum=1, save_every=0, precision="fp32")
    train(whole, ex, _cfg(**cfg, tokens_per_pass=0), tmp_path / "a", OBJ)
    calls = []
    train(split, ex, _cfg(**cfg, tokens_per_pass=40), tmp_path / "b", _counting(OBJ, calls))
    # each step collates its micro-batch, then the chunks it runs as
    steps = [i for i, n in enumerate(calls) if n == 8]
    assert len(steps) == 2 and steps[1] > 2
    assert sum(calls[1 : steps[1]]) == 8 and sum(calls[steps[1] + 1 :]) == 8
    for (name, p), (_, q) in zip(whole.named_parameters(), split.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_an_objective_that_is_not_splittable_runs_whole(tmp_path):
    calls = []
    objective = _counting(dataclasses.replace(OBJ, splittable=False), calls)
    cfg = _cfg(max_steps=2, batch_size=8, grad_accum=1, save_every=0, tokens_per_pass=20)
    train(_seeded_lora_model(), _examples(8), cfg, tmp_path, objective)
    assert calls == [8, 8]


def test_checkpointing_auto_is_the_tasks_choice_and_bad_values_are_config_errors():
    dpo, sft = load_config(None, ["task.type=dpo"]).train, load_config(None, []).train
    assert (dpo.tokens_per_pass, dpo.activation_checkpointing) == (0, True)
    assert (sft.tokens_per_pass, sft.activation_checkpointing) == (0, False)
    explicit = load_config(None, ["task.type=dpo", "train.activation_checkpointing=false"])
    assert explicit.train.activation_checkpointing is False
    assert load_config(None, ["train.tokens_per_pass=300"]).train.tokens_per_pass == 300
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="tokens_per_pass"):
            load_config(None, [f"train.tokens_per_pass={bad}"])
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_config(None, ["train.activation_checkpointing=sometimes"])
