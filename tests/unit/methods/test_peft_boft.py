"""BOFT against Hugging Face PEFT (the reference implementation; tests only).

On the tiny Llama (PEFT's BOFT wraps nn.Linear only, so GPT-2's Conv1D layers are ours alone): an
adapter saved by us loads in PEFT with the same logits, one saved by PEFT loads in ours with the
same logits, our merge gives PEFT's merged logits, and the gradients agree. fp32, max abs diff
<= 1e-5, R and s randomised so the rotations and scales change the output.

PEFT builds more than one butterfly factor only with its CUDA block-diagonal kernel (fbd_cuda);
without it (any CPU machine) it quietly uses one factor whatever boft_n_butterfly_factor says. So
for the butterfly cases PEFT is given `_TorchBlockDiag`, which computes what that kernel computes,
and PEFT's own butterfly code (its permutation matrices and products) runs; the one-factor cases
run PEFT's genuine CPU fallback (torch.block_diag). Neither ever tries to compile the kernel.
"""

import copy
import json

import pytest
import torch

from tests.tiny import tiny_llama
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.methods import (
    apply_method,
    merge_adapters,
    set_active_adapters,
    unmerge_adapters,
)
from tunesmith.methods.boft import BoftConfig, BoftLinear
from tunesmith.methods.io import load_adapter, save_adapter
from tunesmith.methods.lora import LoraConfig

peft = pytest.importorskip("peft")
boft_layer = pytest.importorskip("peft.tuners.boft.layer")

TOL = 1e-5
INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
TARGETS = ["q_proj", "v_proj", "down_proj"]  # in_features 16, 16, 32

PAIRS = {  # id: (ours, PEFT's BOFTConfig kwargs)
    "block_size": (
        BoftConfig(boft_block_size=4, target_modules=TARGETS),
        dict(boft_block_size=4),
    ),
    "block_num": (
        BoftConfig(boft_block_size=0, boft_block_num=2, target_modules=TARGETS),
        dict(boft_block_size=0, boft_block_num=2),
    ),
    "butterfly": (  # 3 factors of 2 x 2 blocks
        BoftConfig(boft_block_size=2, boft_n_butterfly_factor=3, target_modules=TARGETS),
        dict(boft_block_size=2, boft_n_butterfly_factor=3),
    ),
    "block_num-butterfly": (  # 4 blocks (of 4, or 8 on down_proj) per factor, 2 factors
        BoftConfig(
            boft_block_size=0, boft_block_num=4, boft_n_butterfly_factor=2, target_modules=TARGETS
        ),
        dict(boft_block_size=0, boft_block_num=4, boft_n_butterfly_factor=2),
    ),
}


class _TorchBlockDiag:
    """PEFT's fbd_cuda kernel in PyTorch: (z, N, b, b) blocks -> (z, N b, N b) block-diagonal
    matrices, and back (the gradient's diagonal blocks)."""

    @staticmethod
    def forward(blocks):
        z, n, b, _ = blocks.shape
        eye = torch.eye(n, dtype=blocks.dtype, device=blocks.device)
        return [torch.einsum("znij,nm->znimj", blocks, eye).reshape(z, n * b, n * b)]

    @staticmethod
    def backward(grad, blocks):
        z, n, b, _ = blocks.shape
        diag = torch.diagonal(grad.reshape(z, n, b, n, b), dim1=1, dim2=3)  # (z, b, b, n)
        return [diag.permute(0, 3, 1, 2).contiguous()]


@pytest.fixture(autouse=True)
def _peft_kernel(request, monkeypatch):
    # What PEFT's get_fbd_cuda finds: the stand-in for the butterfly cases, else nothing (the
    # kernel did not build: PEFT's CPU fallback). Either way it never tries to compile it.
    key = request.node.callspec.params.get("key") if hasattr(request.node, "callspec") else None
    butterfly = key is not None and PAIRS[key][0].boft_n_butterfly_factor > 1
    _use_kernel(monkeypatch, _TorchBlockDiag() if butterfly else None)


def _use_kernel(monkeypatch, kernel):
    monkeypatch.setattr(boft_layer, "get_fbd_cuda", lambda: kernel)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT, attention_mask=MASK).logits


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "boft_R" in n:
                p.copy_(0.3 * torch.randn_like(p))
            elif "boft_s" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))


def _ours(key):
    model = apply_method(tiny_llama(), copy.deepcopy(PAIRS[key][0]))
    _randomise(model)
    return model


def _peft(key):
    cfg = peft.BOFTConfig(task_type="CAUSAL_LM", target_modules=TARGETS, **PAIRS[key][1])
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
    # the same butterfly matrix as PEFT's (its permutation matrices P_i and their products)
    layer = ours.model.layers[1].mlp.down_proj
    peft_layer = theirs.base_model.model.model.layers[1].mlp.down_proj
    expected = peft_layer.get_delta_weight("default")[0]
    assert _max_diff(layer.rotation("default"), expected) <= TOL


@pytest.mark.parametrize("key", PAIRS)
def test_merge_matches_peft_merge(key, tmp_path):
    ours = _ours(key)
    unmerged = _logits(ours)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval().merge_and_unload()
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL
    unmerge_adapters(ours)
    assert _max_diff(_logits(ours), unmerged) <= TOL


@pytest.mark.parametrize("key", PAIRS)
def test_gradients_match_peft(key, tmp_path):
    ours = _ours(key)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    labels = INPUT.masked_fill(MASK == 0, -100)
    for model in (ours, theirs):
        model(input_ids=INPUT, attention_mask=MASK, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    checked = 0
    for name, p in ours.named_parameters():
        if p.requires_grad:
            # gradients are ~1e-3 here, so an absolute 1e-7 is a relative 1e-4 (measured ~1e-9)
            assert _max_diff(p.grad, grads[f"base_model.model.{name}"]) <= 1e-7, name
            checked += 1
    assert checked == len(grads) == 2 * 2 * len(TARGETS)  # boft_R and boft_s, 2 blocks


def test_two_active_adapters_compose_as_in_peft(monkeypatch, tmp_path):
    # x M_b M_a and s_a s_b for active [a, b]. PEFT keeps one permutation buffer per layer, so
    # both adapters have one layout.
    _use_kernel(monkeypatch, _TorchBlockDiag())
    for seed, name in ((1, "a"), (2, "b")):
        model = apply_method(tiny_llama(), copy.deepcopy(PAIRS["butterfly"][0]))
        torch.manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "boft_" in n:
                    p.add_(0.2 * torch.randn_like(p))
        save_adapter(model, tmp_path / name)
    ours = load_adapter(load_adapter(tiny_llama(), tmp_path / "a", "a"), tmp_path / "b", "b")
    set_active_adapters(ours, ["a", "b"])
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    theirs.base_model.set_adapter(["a", "b"])
    assert _max_diff(_logits(ours), _logits(theirs.eval())) <= TOL
    merge_adapters(ours)
    assert _max_diff(_logits(ours), _logits(theirs)) <= TOL


def test_rotation_is_orthogonal_and_mixes_across_blocks():
    model = _ours("butterfly")
    m = model.model.layers[0].self_attn.q_proj.rotation("default")  # (16, 16)
    torch.testing.assert_close(m @ m.T, torch.eye(16), atol=1e-5, rtol=0)
    # 3 factors of 2 x 2 blocks: each output feature depends on 2^3 = 8 inputs, one factor on 2
    assert ((m.abs() > 1e-6).sum(0) == 8).all()


@pytest.mark.parametrize(
    "setting", [{"bias": "all"}, {"layers_to_transform": [0]}, {"modules_to_save": ["lm_head"]}]
)
def test_peft_options_we_lack_fail_clearly(setting, tmp_path):
    save_adapter(_ours("block_size"), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **setting}))
    with pytest.raises(CheckpointError, match=f"{next(iter(setting))}.*not support"):
        load_adapter(tiny_llama(), tmp_path)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(boft_block_size=32), "boft_block_size=32 does not fit the 16 inputs of"),
        (dict(boft_block_size=3, boft_n_butterfly_factor=2), "boft_block_size=3 does not fit"),
        (dict(boft_block_size=0, boft_block_num=2, boft_n_butterfly_factor=3), "block_num=2"),
    ],
)
def test_blocks_that_do_not_fit_fail_before_changing_the_model(cfg, message):
    model = tiny_llama()
    with pytest.raises(ConfigError, match=message):
        apply_method(model, BoftConfig(target_modules=["down_proj", "q_proj"], **cfg))
    assert not any(isinstance(m, BoftLinear) for m in model.modules())


def test_a_layer_held_by_another_method_is_refused_before_changing_the_model():
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.raises(ConfigError, match="v_proj already holds a LoraLinear adapter"):
        apply_method(model, BoftConfig(target_modules=["q_proj", "v_proj"]), "boft")
    assert not any(isinstance(m, BoftLinear) for m in model.modules())


def test_contradictory_block_settings_are_refused():
    with pytest.raises(ConfigError, match="exactly one of method.boft_block_size"):
        BoftConfig(boft_block_size=4, boft_block_num=4)
    with pytest.raises(ConfigError, match="boft_n_butterfly_factor must be >= 1"):
        BoftConfig(boft_n_butterfly_factor=0)


def test_dropout_acts_in_training_only():
    cfg = copy.deepcopy(PAIRS["butterfly"][0])
    cfg.boft_dropout = 0.5
    model = apply_method(tiny_llama(), cfg).eval()  # new layers start in training mode
    _randomise(model)
    reference = _ours("butterfly")
    assert _max_diff(_logits(model), _logits(reference)) == 0  # eval: no dropout
    model.train()
    assert _max_diff(_logits(model), _logits(reference)) > 1e-4


def test_peft_cpu_adapter_with_quietly_dropped_factors_is_refused(tmp_path):
    # Without its kernel PEFT keeps one factor although the config asks for 2; loading that as 2
    # factors would be wrong, so the load fails on the tensor's shape (docs/methods/boft.md).
    cfg = peft.BOFTConfig(
        task_type="CAUSAL_LM",
        target_modules=["q_proj"],
        boft_block_size=2,
        boft_n_butterfly_factor=2,
    )
    theirs = peft.get_peft_model(tiny_llama(), cfg)
    theirs.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"boft_R has shape \(1, 8, 2, 2\).*needs \(2, 8"):
        load_adapter(tiny_llama(), tmp_path)
