"""AdaLoRA against Hugging Face PEFT (the reference implementation; tests only).

On tiny Llama and GPT-2 models: adapters saved by us load in PEFT and PEFT's load in ours with
the same logits (fp32, max abs diff <= 1e-5), with and without a rank pattern (only the kept
directions saved); merged logits equal PEFT's; and PEFT's RankAllocator, fed the same parameters
and gradients update after update, makes the same masks and rank patterns as ours.
"""

import copy
import json

import pytest
import torch

from tests.unit.methods.matrix_support import BUILDERS
from tunesmith.errors import CheckpointError
from tunesmith.methods import adapter_configs, apply_method, get_method, merge_adapters
from tunesmith.methods.adalora import AdaloraConfig, SvdLinear
from tunesmith.methods.io import load_adapter, save_adapter

peft = pytest.importorskip("peft")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_proj"]}
SCHEDULE = dict(init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=2, total_step=10)


def _ours_cfg(arch):
    return AdaloraConfig(alpha=8, target_modules=TARGETS[arch], **SCHEDULE)


def _peft_cfg(arch):
    return peft.AdaLoraConfig(
        task_type="CAUSAL_LM", lora_alpha=8, target_modules=TARGETS[arch], **SCHEDULE
    )


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _key(name):
    # parameter names without PEFT's wrapper prefix and the adapter name: <layer>.lora_A ...
    return name.replace("base_model.model.", "", 1).replace(".default", "")


def _params(model):
    names = ("lora_A", "lora_B", "lora_E")
    return {_key(n): p for n, p in model.named_parameters() if any(k in n for k in names)}


def _randomise(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(_params(model).items()):
            p.copy_(0.3 * torch.randn_like(p))


def _fake_updates(models, last, allocate, first=1):
    """Give every model the same parameter changes and gradients for updates first..last,
    calling allocate(model, update) after each (as the loop does after optimizer.step)."""
    for update in range(first, last + 1):
        torch.manual_seed(100 + update)
        params = [_params(m) for m in models]
        for key in sorted(params[0]):
            delta, grad = torch.randn_like(params[0][key]), torch.randn_like(params[0][key])
            for p in params:
                with torch.no_grad():
                    p[key].add_(0.05 * delta)
                p[key].grad = grad.clone()
        for m in models:
            allocate(m, update)


def _peft_allocate(model, update):
    model.base_model.update_and_allocate(update - 1)  # PEFT counts updates from 0


def _ours_allocate(model, update):
    get_method("adalora").on_update(model, "default", update)


def _pair(arch):
    base = BUILDERS[arch]()
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_cfg(arch))
    ours = apply_method(copy.deepcopy(base), _ours_cfg(arch))
    _randomise(theirs)
    with torch.no_grad():
        for key, p in _params(ours).items():
            p.copy_(_params(theirs)[key])
    return base, ours, theirs


def _e_masks(model):
    return {
        k: (p.view(-1) != 0).tolist() for k, p in _params(model).items() if k.endswith("lora_E")
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rank_allocation_on_the_same_gradients_equals_peft(arch):
    _, ours, theirs = _pair(arch)
    allocate = {id(ours): _ours_allocate, id(theirs): _peft_allocate}
    for update in range(1, 11):  # budgeting (updates 3-8), final masking (9), fixed after
        _fake_updates([ours, theirs], update, lambda m, u: allocate[id(m)](m, u), first=update)
        assert _e_masks(ours) == _e_masks(theirs), f"update {update}"
        ours_pattern = adapter_configs(ours)["default"].rank_pattern
        theirs_pattern = theirs.peft_config["default"].rank_pattern
        if theirs_pattern is None:
            assert ours_pattern is None
        else:
            assert ours_pattern == {_key(k): v for k, v in theirs_pattern.items()}
    layers = [m for m in ours.modules() if isinstance(m, SvdLinear)]
    assert sum(int(m.keep["default"].sum()) for m in layers) == 2 * len(layers)  # target_r


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("masked", [False, True])
def test_ours_saved_loads_in_peft(arch, masked, tmp_path):
    base, ours, _ = _pair(arch)
    if masked:
        _fake_updates([ours], 5, _ours_allocate)  # update 5 (PEFT's step 4) masks last
        assert adapter_configs(ours)["default"].rank_pattern is not None
    assert _max_diff(_logits(ours), _logits(base)) > 1e-3, "the adapter should act"
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert _max_diff(_logits(theirs), _logits(ours)) <= TOL


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("masked", [False, True])
def test_peft_saved_loads_in_ours(arch, masked, tmp_path):
    base, _, theirs = _pair(arch)
    if masked:
        _fake_updates([theirs], 5, _peft_allocate)
        assert theirs.peft_config["default"].rank_pattern is not None
    theirs.eval()
    assert _max_diff(_logits(theirs), _logits(base)) > 1e-3, "the adapter should act"
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_matches_peft_merge(arch, tmp_path):
    base, ours, _ = _pair(arch)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval().merge_and_unload()
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize(
    "setting", [{"bias": "all"}, {"modules_to_save": ["lm_head"]}, {"use_rslora": True}]
)
def test_peft_options_we_lack_fail_clearly(setting, tmp_path):
    _, ours, _ = _pair("llama")
    save_adapter(ours, tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **setting}))
    with pytest.raises(CheckpointError, match=f"{next(iter(setting))}.*not support"):
        load_adapter(BUILDERS["llama"](), tmp_path)
