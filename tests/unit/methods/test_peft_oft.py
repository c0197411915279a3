"""OFT against Hugging Face PEFT (the reference implementation; tests only).

On the tiny Llama (PEFT's OFT wraps nn.Linear only, so GPT-2's Conv1D layers are ours alone): an
adapter saved by us loads in PEFT with the same logits, one saved by PEFT loads in ours with the
same logits, and our merge gives PEFT's merged logits. fp32, max abs diff <= 1e-5, generators
randomised so the rotations change the output.
"""

import copy
import json

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.methods import apply_method, merge_adapters
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.oft import OftConfig, OftLinear

peft = pytest.importorskip("peft")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
TARGETS = ["q_proj", "v_proj", "down_proj"]

PAIRS = {  # id: (ours, PEFT's OFTConfig kwargs)
    "block_size": (
        OftConfig(oft_block_size=4, target_modules=TARGETS),
        dict(oft_block_size=4, use_cayley_neumann=False),
    ),
    "r-neumann": (
        OftConfig(r=2, oft_block_size=0, use_cayley_neumann=True, target_modules=TARGETS),
        dict(r=2, oft_block_size=0, use_cayley_neumann=True),
    ),
    "share": (
        OftConfig(oft_block_size=8, block_share=True, target_modules=TARGETS),
        dict(oft_block_size=8, block_share=True, use_cayley_neumann=False),
    ),
    "coft": (
        OftConfig(oft_block_size=4, coft=True, eps=1.0, target_modules=TARGETS),
        dict(oft_block_size=4, coft=True, eps=1.0, use_cayley_neumann=False),
    ),
}


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "oft_R" in n:
                p.copy_(0.3 * torch.randn_like(p))


def _ours(key):
    model = apply_method(tiny_llama(), copy.deepcopy(PAIRS[key][0]))
    _randomise(model)
    return model


def _peft(key):
    cfg = peft.OFTConfig(task_type="CAUSAL_LM", target_modules=TARGETS, **PAIRS[key][1])
    model = peft.get_peft_model(tiny_llama(), cfg)
    _randomise(model)
    return model.eval()


@pytest.mark.parametrize("key", PAIRS)
def test_ours_saved_loads_in_peft(key, tmp_path):
    ours = _ours(key)
    assert _max_diff(_logits(ours), _logits(tiny_llama())) > 1e-3, "the adapter should act"
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert _max_diff(_logits(theirs), _logits(ours)) <= TOL


@pytest.mark.parametrize("key", PAIRS)
def test_peft_saved_loads_in_ours(key, tmp_path):
    theirs = _peft(key)
    assert _max_diff(_logits(theirs), _logits(tiny_llama())) > 1e-3, "the adapter should act"
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(tiny_llama(), tmp_path)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("key", PAIRS)
def test_merge_matches_peft_merge(key, tmp_path):
    ours = _ours(key)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval().merge_and_unload()
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


def test_rotation_is_orthogonal():
    model = _ours("block_size")
    layer = model.model.layers[0].self_attn.q_proj
    r = layer.rotation("default")
    torch.testing.assert_close(r @ r.T, torch.eye(r.shape[0]), atol=1e-5, rtol=0)
    assert _max_diff(r, torch.eye(r.shape[0])) > 0.1  # a real rotation, not the identity


@pytest.mark.parametrize(
    "setting", [{"bias": "all"}, {"layers_to_transform": [0]}, {"modules_to_save": ["lm_head"]}]
)
def test_peft_options_we_lack_fail_clearly(setting, tmp_path):
    save_adapter(_ours("block_size"), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **setting}))
    with pytest.raises(CheckpointError, match=f"{next(iter(setting))}.*not support"):
        load_adapter(tiny_llama(), tmp_path)


def test_block_size_that_does_not_divide_fails_before_changing_the_model():
    model = tiny_llama()  # down_proj has 32 inputs, the others 16
    with pytest.raises(ConfigError, match="oft_block_size=32 does not divide the 16 inputs of"):
        apply_method(model, OftConfig(oft_block_size=32, target_modules=["down_proj", "q_proj"]))
    assert not any(isinstance(m, OftLinear) for m in model.modules())
