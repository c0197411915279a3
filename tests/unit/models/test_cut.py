"""A student cut from its teacher's blocks: the kept blocks are the teacher's, it saves as a plain
transformers directory, and its KV cache still works."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from tests.tiny import tiny_llama
from tunesmith.errors import ConfigError
from tunesmith.models.cut import block_list, cut_layers, resolve_keep_layers


def _gpt2(layers: int = 4):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=16, n_layer=layers, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


MODELS = {"llama": lambda: tiny_llama(num_hidden_layers=4), "gpt2": _gpt2}
IDS = torch.tensor([[5, 9, 17, 33, 40, 41, 7]])


@pytest.mark.parametrize("arch", list(MODELS))
def test_kept_blocks_hold_the_teachers_weights(arch):
    teacher = MODELS[arch]()
    student = copy.deepcopy(teacher)
    assert cut_layers(student, "every_other") == [0, 2]
    assert len(block_list(student)) == 2
    for new, old in ((0, 0), (1, 2)):
        ours = block_list(student)[new].state_dict()
        theirs = block_list(teacher)[old].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert student.config.num_hidden_layers == 2
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in teacher.parameters()
    )


@pytest.mark.parametrize("arch", list(MODELS))
def test_the_cut_computes_the_teachers_chosen_blocks_in_order(arch):
    teacher = MODELS[arch]()
    student = copy.deepcopy(teacher)
    cut_layers(student, [1, 3])
    # The same computation: the teacher with blocks 0 and 2 skipped (made identities).
    skipped = copy.deepcopy(teacher)
    blocks = block_list(skipped)
    kept = torch.nn.ModuleList([blocks[1], blocks[3]])
    for i, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    base = getattr(skipped, "base_model")
    setattr(base, "layers" if arch == "llama" else "h", kept)
    skipped.config.num_hidden_layers = 2
    with torch.no_grad():
        assert torch.allclose(student(IDS).logits, skipped(IDS).logits, atol=1e-6)
        assert not torch.allclose(student(IDS).logits, teacher(IDS).logits, atol=1e-3)


@pytest.mark.parametrize("arch", list(MODELS))
def test_the_cut_saves_as_a_plain_transformers_directory(arch, tmp_path):
    student = MODELS[arch]()
    cut_layers(student, "every_other")
    student.save_pretrained(tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student", local_files_only=True)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, student(IDS).logits)
    assert len(block_list(loaded)) == 2


@pytest.mark.parametrize("arch", list(MODELS))
def test_generation_with_kv_cache_equals_generation_without(arch):
    student = MODELS[arch]()
    cut_layers(student, [1, 2])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = student.generate(IDS, use_cache=True, **kwargs)
        plain = student.generate(IDS, use_cache=False, **kwargs)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize(
    "keep, fragment",
    [
        ([0, 4], "blocks 0..3"),
        ([2, 1], "distinct and increasing"),
        ("half", "every_other or a list"),
        ([], "every_other or a list"),
    ],
)
def test_bad_keep_layers_are_config_errors(keep, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_keep_layers(keep, 4)


def test_keep_layers_loads_a_cut_student_from_a_directory(tmp_path):
    from tests.tiny import save_tiny_model
    from tunesmith.models import load_base_model

    path = save_tiny_model(tmp_path / "teacher", tiny_llama(num_hidden_layers=4))
    student, _ = load_base_model(str(path), keep_layers=[0, 3])
    assert student.config.num_hidden_layers == 2
