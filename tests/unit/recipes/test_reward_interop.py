"""Reward models across layouts: a merged tunesmith reward run is a transformers sequence
classifier, and a transformers (or TRL-trained) sequence classifier scores in tunesmith."""

import json
import random

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    LlamaForSequenceClassification,
)

import tunesmith
from tests.tiny import save_tiny_model, tiny_reward_classifier, tiny_tokenizer
from tunesmith.cli.main import main
from tunesmith.errors import CheckpointError
from tunesmith.recipes import reward

PROMPTS = ["q abc", "q defgh", "q a"]
ANSWERS = ["abc yes", "defgh no", "a yes, sure"]


def _pairs_file(tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(16):
        question = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
        rows.append(
            {"prompt": f"q {question}", "chosen": f"{question} yes", "rejected": f"{question} no"}
        )
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eos_padded_tokenizer():
    # As SmolLM2: the pad token is EOS, which ends every encoded answer.
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    tok.unk_token = "<pad>"  # a special token the chat template never writes
    return tok


@pytest.fixture(params=["pad", "eos-pad"])
def reward_run(request, tmp_path, cache_dir):
    """(tiny base dir, reward run dir) after a few steps of reward training."""
    tokenizer = tiny_tokenizer() if request.param == "pad" else _eos_padded_tokenizer()
    model_dir = save_tiny_model(tmp_path / "tiny", tokenizer=tokenizer)
    cfg = tunesmith.load_config(
        None,
        [
            f"model.name={model_dir}",
            f"data.train={_pairs_file(tmp_path)}",
            "data.max_length=48",
            "data.split=[1.0, 0.0, 0.0]",
            "task.type=reward",
            "method.name=lora",
            "method.r=4",
            "method.target_modules=all-linear",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.lr=2e-2",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    reward.run(cfg)
    return model_dir, tmp_path / "run"


def test_a_merged_reward_run_is_a_sequence_classifier_with_the_same_rewards(
    reward_run, tmp_path, capsys
):
    model_dir, run_dir = reward_run
    merged = tmp_path / "merged"
    assert (
        main(
            ["merge", "--model", str(model_dir), "--adapter", str(run_dir), "--output", str(merged)]
        )
        == 0
    )
    assert "AutoModelForSequenceClassification" in capsys.readouterr().out

    hf = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    assert hf.config.num_labels == 1 and hf.score.bias is None
    assert tuple(hf.score.weight.shape) == (1, hf.config.hidden_size)
    assert hf.config.pad_token_id is not None
    assert hf.config.pad_token_id != hf.config.eos_token_id

    ours = reward.load_reward_scorer(run_dir, str(model_dir))
    expected = ours(PROMPTS, ANSWERS)  # batched, right-padded
    # transformers' own forward on the same token ids, padded with the exported pad token
    rows = [ours.encode(p, a) for p, a in zip(PROMPTS, ANSWERS)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [hf.config.pad_token_id] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        got = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5, rtol=0)
    # the merged directory, read back by tunesmith, renders the texts as the run does
    again = reward.load_reward_scorer(merged)(PROMPTS, ANSWERS)
    assert max(abs(a - b) for a, b in zip(again, expected)) <= 1e-5

    assert main(["score", "--model", str(merged), PROMPTS[0], ANSWERS[0]]) == 0
    assert float(capsys.readouterr().out.strip()) == pytest.approx(expected[0], abs=1e-4)


def _tiny_classifier(tmp_path, seed=0):
    model = tiny_reward_classifier(seed)
    path = tmp_path / "classifier"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model, path


def _transformers_rewards(model, tokenizer, prompts, answers):
    out = []
    for p, a in zip(prompts, answers):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": a}],
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return out


def test_a_sequence_classification_directory_scores_as_transformers_does(tmp_path, capsys):
    model, path = _tiny_classifier(tmp_path)
    expected = _transformers_rewards(model, tiny_tokenizer(), PROMPTS, ANSWERS)
    got = reward.load_reward_scorer(path)(PROMPTS, ANSWERS)  # one right-padded batch
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-5
    assert main(["score", "--model", str(path), PROMPTS[1], ANSWERS[1]]) == 0
    assert float(capsys.readouterr().out.strip()) == pytest.approx(expected[1], abs=1e-4)


@pytest.mark.parametrize("with_peft", [False, True])
def test_a_trl_reward_model_scores_in_tunesmith(tmp_path, with_peft):
    trl = pytest.importorskip("trl")
    peft = pytest.importorskip("peft")
    from datasets import Dataset

    base, base_dir = _tiny_classifier(tmp_path)
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for p, a in zip(PROMPTS, ANSWERS)
    ]
    out = tmp_path / "trl"
    args = trl.RewardConfig(
        str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
    )
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])
    trainer = trl.RewardTrainer(
        model=LlamaForSequenceClassification.from_pretrained(base_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer(),
        peft_config=lora if with_peft else None,
    )
    trainer.train()
    trainer.save_model(str(out))
    model = trainer.model.merge_and_unload() if with_peft else trainer.model
    expected = _transformers_rewards(model.eval(), tiny_tokenizer(), PROMPTS, ANSWERS)
    assert expected != _transformers_rewards(base, tiny_tokenizer(), PROMPTS, ANSWERS)
    got = reward.load_reward_scorer(out, str(base_dir) if with_peft else None)(PROMPTS, ANSWERS)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-5


def test_a_head_with_a_bias_cannot_become_a_bias_free_score(tmp_path, cache_dir):
    from safetensors.torch import save_file

    from tests.tiny import tiny_llama

    save_file(
        {"weight": torch.ones(1, 16), "bias": torch.full((1,), 0.5)},
        str(tmp_path / reward.HEAD_FILE),
    )
    with pytest.raises(CheckpointError, match="has a bias"):
        reward.export_merged(tiny_llama(), tiny_tokenizer(), tmp_path, tmp_path / "out")


def test_neither_a_reward_run_nor_a_classifier_is_a_clear_error(tmp_path):
    save_tiny_model(tmp_path / "lm")  # a causal LM directory
    with pytest.raises(CheckpointError, match="is not a reward model"):
        reward.load_reward_scorer(tmp_path / "lm")
