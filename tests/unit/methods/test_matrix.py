"""Every registered method through one matrix: apply, identity at init, parameter count,
training lowers the loss, save/load round trip, merge == unmerged, cached == uncached generation.

Cases come from every `cases_*.py` module next to this file.
"""

import copy
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

from tests.unit.methods.matrix_support import BUILDERS, DECODERS
from tunesmith.methods import (
    apply_method,
    get_method,
    merge_adapters,
    method_names,
    unmerge_adapters,
)
from tunesmith.methods.base import disabled_adapters
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.utils.modules import count_parameters


def _all_cases():
    cases = []
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        if info.name.startswith("cases_"):
            cases += importlib.import_module(f"tests.unit.methods.{info.name}").CASES
    return cases


CASES = _all_cases()
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])


def _apply(case):
    base = BUILDERS[case.arch]()
    model = apply_method(copy.deepcopy(base), copy.deepcopy(case.cfg))
    return base, model


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _train_steps(model, steps=5, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(
            input_ids=INPUT, attention_mask=MASK, labels=INPUT.masked_fill(MASK == 0, -100)
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_every_registered_method_has_a_case():
    covered = {type(c.cfg)().name for c in CASES}
    assert set(method_names()) <= covered, (
        f"methods without a matrix case: {set(method_names()) - covered}"
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_shape_and_identity_at_init(case):
    base, model = _apply(case)
    out = _logits(model)
    assert out.shape == (2, INPUT.shape[1], base.config.vocab_size)
    if case.identity_at_init:
        torch.testing.assert_close(out, _logits(base), atol=case.atol, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_trainable_count_matches_formula(case):
    base, model = _apply(case)
    assert count_parameters(model)[0] == case.expected_trainable(base)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_training_lowers_loss_and_disable_restores_base(case):
    base, model = _apply(case)
    losses = _train_steps(model)
    assert losses[-1] < losses[0]
    with disabled_adapters(model):
        torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_save_load_round_trip(case, tmp_path):
    base, model = _apply(case)
    _train_steps(model, steps=2)
    save_adapter(model, tmp_path / "adapter")
    fresh = BUILDERS[case.arch]()
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "case", [c for c in CASES if get_method(type(c.cfg)().name).can_merge], ids=str
)
def test_merge_equals_unmerged(case):
    _, model = _apply(case)
    _train_steps(model, steps=2)
    before = _logits(model)
    merge_adapters(model)
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)
    unmerge_adapters(model)
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.arch in DECODERS], ids=str
)  # encoders don't generate
def test_generation_with_and_without_cache_agree(case):
    _, model = _apply(case)
    _train_steps(model, steps=2)
    prompt = INPUT[:1, :5]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)
