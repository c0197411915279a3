"""Multitask prompt tuning: per-row task prompts, and against Hugging Face PEFT (tests only).

On the tiny Llama and GPT-2: an adapter saved by us loads in PEFT with the same logits for every
row's task, and one saved by PEFT loads in ours (fp32, max abs diff <= 1e-5; PEFT's logits
include the virtual positions, cut before comparing). Weights randomised so tasks differ.
"""

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.methods.matrix_support import BUILDERS
from tunesmith.errors import ConfigError
from tunesmith.methods import apply_method
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig, task_ids

peft = pytest.importorskip("peft")

TOL = 1e-5
N = 3
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
TASKS = torch.tensor([2, 0])


def _cfg(**kw):
    return MultitaskPromptTuningConfig(
        **{"num_virtual_tokens": N, "num_tasks": 3, "num_ranks": 2, **kw}
    )


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.7)


def _logits(model, tasks=TASKS, cut=0, ids=INPUT, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, task_ids=tasks).logits[:, cut:]


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def _ours(arch="llama", **kw):
    model = apply_method(BUILDERS[arch](), _cfg(**kw))
    _randomise(model)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ours_loads_in_peft(arch, tmp_path):
    ours = _ours(arch)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(BUILDERS[arch](), tmp_path).eval()
    assert _max_diff(_logits(theirs, cut=N), _logits(ours)) <= TOL


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_loads_in_ours(arch, tmp_path):
    cfg = peft.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, num_tasks=3, num_ranks=2
    )
    theirs = peft.get_peft_model(BUILDERS[arch](), cfg)
    _randomise(theirs)
    theirs.eval().save_pretrained(tmp_path)
    ours = load_adapter(BUILDERS[arch](), tmp_path)
    assert _max_diff(_logits(ours), _logits(theirs, cut=N)) <= TOL


def test_file_holds_peft_names_and_shapes(tmp_path):
    save_adapter(_ours(), tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in saved.items()}
    assert shapes == {
        "prompt_embeddings": (N, 16),
        "prefix_task_cols": (3, N, 2),
        "prefix_task_rows": (3, 2, 16),
    }


def test_each_row_gets_its_own_tasks_prompt():
    model = _ours()
    both = _logits(model, TASKS)
    for row, task in enumerate(TASKS.tolist()):
        alone = _logits(
            model, torch.tensor([task]), ids=INPUT[row : row + 1], mask=MASK[row : row + 1]
        )
        assert _max_diff(both[row : row + 1], alone) <= 1e-6
    assert (
        _max_diff(_logits(model, torch.tensor([0, 0])), _logits(model, torch.tensor([1, 1]))) > 1e-3
    )
    no_ids = model(input_ids=INPUT, attention_mask=MASK).logits
    assert _max_diff(no_ids, _logits(model, torch.tensor([0, 0]))) == 0  # task 0 by default


def test_generation_uses_the_context_task_with_and_without_cache():
    model = _ours()
    prompt, kw = INPUT[:1, :5], dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    for task in (0, 2):
        with task_ids(model, task):
            cached = model.generate(prompt, use_cache=True, **kw)
            assert torch.equal(cached, model.generate(prompt, use_cache=False, **kw))
    with task_ids(model, 2):  # the context task gives the logits of task_ids=[2]
        assert (
            _max_diff(
                model(input_ids=INPUT[:1]).logits,
                _logits(model, torch.tensor([2]), ids=INPUT[:1], mask=MASK[:1]),
            )
            == 0
        )


def test_a_task_id_out_of_range_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"task_ids \[3, 0\].*num_tasks=3"):
        _logits(_ours(), torch.tensor([3, 0]))


@pytest.mark.parametrize(
    "init", ["average_source_tasks", "exact_source_task", "only_source_shared"]
)
def test_source_task_inits_match_peft(init, tmp_path):
    source = _ours()
    save_adapter(source, tmp_path / "src")
    path = str(tmp_path / "src" / "adapter_model.safetensors")
    ours = apply_method(
        BUILDERS["llama"](), _cfg(num_tasks=1, init=init, init_from=path, init_task=2)
    )
    cfg = peft.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=N,
        num_tasks=1,
        num_ranks=2,
        prompt_tuning_init=init.upper(),
        prompt_tuning_init_state_dict_path=path,
        prompt_tuning_init_task=2,
    )
    torch.manual_seed(5)
    theirs = peft.get_peft_model(BUILDERS["llama"](), cfg).eval()
    zeros = torch.tensor([0, 0])
    if init == "only_source_shared":  # the factors stay random: compare the shared prompt
        enc = theirs.prompt_encoder["default"]
        ours_enc = ours.base_model.prompt_encoder.encoders["default"]
        torch.testing.assert_close(ours_enc.prompt_embeddings, enc.embedding.weight, atol=0, rtol=0)
    else:
        assert _max_diff(_logits(ours, zeros), _logits(theirs, zeros, cut=N)) <= TOL
