"""Prompt-based methods beyond the matrix: inits, hidden-state alignment (the trainer's loss path),
left-padded generation, fold(), p-tuning templates, composition with LoRA, and the errors."""

import copy

import pytest
import torch

from tests.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer
from tunesmith.errors import ConfigError, DataError, UnsupportedModuleError
from tunesmith.methods import (
    adapter_configs,
    apply_method,
    disabled_adapters,
    merge_and_unload,
    set_active_adapter,
)
from tunesmith.methods.base import adapter_layers, mark_trainable
from tunesmith.methods.io import load_adapter, read_adapter_config, save_adapter
from tunesmith.methods.llama_adapter import LlamaAdapterConfig
from tunesmith.methods.lora import LoraConfig
from tunesmith.methods.p_tuning import PTuningConfig, template_ids
from tunesmith.methods.p_tuning import fold as fold_p_tuning
from tunesmith.methods.prefix_tuning import PrefixTuningConfig, fold
from tunesmith.methods.prompt_tuning import PromptTuningConfig
from tunesmith.objectives.sft import causal_lm_loss
from tunesmith.utils.modules import count_parameters

INPUT = torch.tensor([[5, 9, 13, 40, 41, 42, 7, 8], [6, 10, 14, 50, 51, 52, 9, 0]])
MASK = torch.tensor([[1] * 8, [1] * 7 + [0]])
LEFT_PADDED = torch.tensor([[0, 0, 9, 13, 40], [6, 10, 14, 50, 51]])
LEFT_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
PLACEHOLDER = 5  # the tiny tokenizer's '!', which the test texts never contain


def _logits(model, ids=INPUT, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _prompts(model, name="default"):
    return model.base_model.prompt_encoder.encoders[name]()


def _generate_both(model, ids, mask):
    kwargs = dict(
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    cached = model.generate(ids, attention_mask=mask, use_cache=True, **kwargs)
    uncached = model.generate(ids, attention_mask=mask, use_cache=False, **kwargs)
    return cached, uncached


# --- prompt tuning -------------------------------------------------------------------------------
def test_prompt_tuning_text_init_repeats_the_text_embeddings(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    model = apply_method(
        tiny_llama(),
        PromptTuningConfig(
            num_virtual_tokens=5, init="text", init_text="ab", tokenizer=str(tmp_path / "tok")
        ),
    )
    ids = tok("ab")["input_ids"]
    expected = model.get_input_embeddings().weight[(ids * 5)[:5]]
    torch.testing.assert_close(_prompts(model), expected, atol=0, rtol=0)
    assert read_adapter_config(save_adapter(model, tmp_path / "a"))["prompt_tuning_init"] == "TEXT"


def test_prompt_tuning_vocab_init_takes_vocabulary_rows():
    model = apply_method(tiny_llama(), PromptTuningConfig(num_virtual_tokens=4, init="vocab"))
    vocab = model.get_input_embeddings().weight
    assert all((vocab == row).all(dim=1).any() for row in _prompts(model))


def test_hidden_states_align_with_real_tokens_and_the_trainer_loss_matches():
    model = apply_method(tiny_llama(), PromptTuningConfig(num_virtual_tokens=3))
    embeds = torch.cat(
        [_prompts(model).expand(2, -1, -1), model.get_input_embeddings()(INPUT)], dim=1
    )
    with torch.no_grad(), disabled_adapters(model):
        reference = model.base_model(
            inputs_embeds=embeds,
            attention_mask=torch.cat([torch.ones(2, 3, dtype=MASK.dtype), MASK], 1),
        ).last_hidden_state
    with torch.no_grad():
        hidden = model.base_model(input_ids=INPUT, attention_mask=MASK).last_hidden_state
        labels = INPUT.masked_fill(MASK == 0, -100)
        loss, _ = causal_lm_loss(model, INPUT, MASK, labels)
        torch.testing.assert_close(
            loss, model(input_ids=INPUT, attention_mask=MASK, labels=labels).loss
        )
    torch.testing.assert_close(hidden, reference[:, 3:], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "cfg",
    [
        PromptTuningConfig(num_virtual_tokens=3),
        PrefixTuningConfig(num_virtual_tokens=3),
        PTuningConfig(num_virtual_tokens=2),
    ],
    ids=lambda c: c.name,
)
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_left_padded_generation_cached_equals_uncached(cfg, build):
    model = apply_method(build(), copy.deepcopy(cfg))
    cached, uncached = _generate_both(model, LEFT_PADDED, LEFT_MASK)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_p_tuning_on_gpt2_round_trips(tmp_path):
    # (no matrix cell: see cases_prompt.py)
    model = apply_method(tiny_gpt2(), PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    assert _logits(model).shape == (2, 8, 128)
    fresh = load_adapter(tiny_gpt2(), save_adapter(model, tmp_path / "a"))
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=1e-6, rtol=0)


# --- fold ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, fold_fn",
    [
        (PrefixTuningConfig(num_virtual_tokens=3), fold),
        (PTuningConfig(num_virtual_tokens=3), fold_p_tuning),
    ],
    ids=["prefix", "p"],
)
def test_fold_keeps_outputs_and_leaves_a_plain_table(cfg, fold_fn, tmp_path):
    model = apply_method(tiny_llama(), copy.deepcopy(cfg))
    before = _logits(model)
    fold_fn(model)
    torch.testing.assert_close(_logits(model), before, atol=1e-6, rtol=0)
    table = _prompts(model)
    assert count_parameters(model)[0] == table.numel() and table.requires_grad
    assert adapter_configs(model)["default"].folded
    fresh = load_adapter(tiny_llama(), save_adapter(model, tmp_path / "a"))
    torch.testing.assert_close(_logits(fresh), before, atol=1e-6, rtol=0)


# --- p-tuning templates --------------------------------------------------------------------------
TEMPLATE = "[P][P] {text} [P] It was"


def _template_batch():
    tok = tiny_tokenizer()
    rows = [template_ids(TEMPLATE, text, tok, PLACEHOLDER) for text in ("good film", "bad one")]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


def test_template_ids_put_placeholders_and_anchor_words():
    tok = tiny_tokenizer()
    ids = template_ids(TEMPLATE, "ok", tok, PLACEHOLDER)
    expected = (
        [PLACEHOLDER] * 2 + tok(" ok ", add_special_tokens=False)["input_ids"] + [PLACEHOLDER]
    )
    assert ids == expected + tok(" It was", add_special_tokens=False)["input_ids"]


def test_template_slots_get_the_encoder_outputs_in_order():
    ids, mask = _template_batch()
    model = apply_method(
        tiny_llama(),
        PTuningConfig(num_virtual_tokens=1, template=TEMPLATE, placeholder_token_id=PLACEHOLDER),
    )
    table = _prompts(model).detach()  # (1 prepended + 3 slots, D)
    embeds = model.get_input_embeddings()(ids).detach()
    for row in range(2):
        slots = (ids[row] == PLACEHOLDER).nonzero().flatten()
        embeds[row, slots] = table[1:]
    embeds = torch.cat([table[:1].expand(2, -1, -1), embeds], 1)
    with torch.no_grad(), disabled_adapters(model):
        reference = model(
            inputs_embeds=embeds,
            attention_mask=torch.cat([torch.ones(2, 1, dtype=mask.dtype), mask], 1),
        ).logits[:, 1:]
    out = _logits(model, ids, mask)
    assert out.shape == (*ids.shape, 128)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


def test_template_round_trip_and_generation(tmp_path):
    ids, mask = _template_batch()
    cfg = PTuningConfig(
        num_virtual_tokens=0, template=TEMPLATE, placeholder_token_id=PLACEHOLDER, encoder="mlp"
    )
    model = apply_method(tiny_llama(), cfg)
    cached, uncached = _generate_both(model, ids[:1], mask[:1])
    assert torch.equal(cached.sequences, uncached.sequences)
    fresh = load_adapter(tiny_llama(), save_adapter(model, tmp_path / "a"))
    assert adapter_configs(fresh)["default"].template == TEMPLATE
    torch.testing.assert_close(
        _logits(fresh, ids, mask), _logits(model, ids, mask), atol=1e-6, rtol=0
    )


def test_template_inputs_without_placeholders_are_a_data_error():
    model = apply_method(
        tiny_llama(),
        PTuningConfig(num_virtual_tokens=0, template=TEMPLATE, placeholder_token_id=PLACEHOLDER),
    )
    with pytest.raises(DataError, match="placeholder"):
        _logits(model)


# --- composition and adapters side by side -------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        PromptTuningConfig(num_virtual_tokens=3),
        PrefixTuningConfig(num_virtual_tokens=3),
        LlamaAdapterConfig(adapter_len=3, adapter_layers=1),
    ],
    ids=lambda c: c.name,
)
def test_lora_and_a_prompt_method_train_together_and_reload(cfg, tmp_path):
    model = apply_method(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), "lora")
    apply_method(model, copy.deepcopy(cfg), "prompt")
    for _, layer in adapter_layers(model):  # train both adapters
        for name in layer.adapter_names:
            for p in layer.adapter_parameters(name).values():
                p.requires_grad_(True)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(
            input_ids=INPUT, attention_mask=MASK, labels=INPUT.masked_fill(MASK == 0, -100)
        ).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, params[n])
    }
    assert any("lora_B" in n for n in changed) and any("lora" not in n for n in changed)
    fresh = tiny_llama()
    load_adapter(fresh, save_adapter(model, tmp_path / "lora", "lora"), "lora")
    load_adapter(fresh, save_adapter(model, tmp_path / "prompt", "prompt"), "prompt")
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=1e-6, rtol=0)
    before = _logits(model)
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge_and_unload(model)
    torch.testing.assert_close(
        _logits(model), before, atol=0, rtol=0
    )  # refused before anything merged


def test_lora_all_linear_leaves_a_prompt_encoder_alone():
    model = apply_method(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=2), "prefix")
    apply_method(model, LoraConfig(r=2, target_modules="all-linear"), "lora")
    wrapped = {n for n, layer in adapter_layers(model) if "lora" in layer.adapter_names}
    assert len(wrapped) == 2 * 7 and not any("prompt_encoder" in n for n in wrapped)


def test_two_prompt_tuning_adapters_switch():
    model = apply_method(tiny_llama(), PromptTuningConfig(num_virtual_tokens=2), "a")
    only_a = _logits(model)
    apply_method(model, PromptTuningConfig(num_virtual_tokens=4), "b")
    only_b = _logits(model)
    set_active_adapter(model, "a")
    torch.testing.assert_close(_logits(model), only_a, atol=0, rtol=0)
    assert not torch.allclose(only_a, only_b)
    mark_trainable(model, "a")
    assert count_parameters(model)[0] == 2 * 16


def test_two_prompt_methods_on_one_model_are_refused():
    model = apply_method(tiny_llama(), PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="another method"):
        apply_method(model, PrefixTuningConfig(num_virtual_tokens=2), "other")


# --- errors --------------------------------------------------------------------------------------
def test_llama_adapter_refuses_other_architectures_and_too_many_layers():
    with pytest.raises(UnsupportedModuleError, match="Llama-family"):
        apply_method(tiny_gpt2(), LlamaAdapterConfig(adapter_len=2, adapter_layers=1))
    with pytest.raises(ConfigError, match="adapter_layers=3"):
        apply_method(tiny_llama(), LlamaAdapterConfig(adapter_len=2, adapter_layers=3))


def test_prefix_tuning_refuses_gradient_checkpointing():
    model = apply_method(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=2))
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(UnsupportedModuleError, match="gradient checkpointing"):
        model(input_ids=INPUT, attention_mask=MASK)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PromptTuningConfig(num_virtual_tokens=0),
        lambda: PromptTuningConfig(init="text"),
        lambda: PromptTuningConfig(init_text="hello"),
        lambda: PrefixTuningConfig(projection=False, encoder_hidden_size=8),
        lambda: PTuningConfig(encoder="gru"),
        lambda: PTuningConfig(encoder="mlp", encoder_num_layers=3),
        lambda: PTuningConfig(encoder_num_layers=1, encoder_dropout=0.1),
        lambda: PTuningConfig(template="[P] no text slot", placeholder_token_id=PLACEHOLDER),
        lambda: PTuningConfig(template=TEMPLATE),
        lambda: PTuningConfig(num_virtual_tokens=0),
        lambda: LlamaAdapterConfig(adapter_len=0),
    ],
)
def test_contradictory_or_invalid_configs_are_errors(make):
    with pytest.raises(ConfigError):
        make()
