import json
import logging
from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunesmith.data.encode import IGNORE, encode_record
from tunesmith.data.preference import (
    KtoExample,
    PreferencePair,
    collate_kto,
    collate_pairs,
    encode_kto,
    encode_pair,
    encode_pairs,
    kl_mismatched,
    read_kto,
    read_preference,
)
from tunesmith.data.readers import SOURCE
from tunesmith.errors import DataError
from tunesmith.objectives.preference import response_logps

RASBT = (
    Path(__file__).resolve().parents[3]
    / ".."
    / "shared"
    / "data"
    / "preference_rasbt"
    / "instruction-data-with-preference.json"
).resolve()


def _jsonl(tmp_path, records, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_text_forms_with_instruction_input_prompt_and_margin(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"instruction": "Fix", "input": "teh cat", "chosen": "the cat", "rejected": "cat"},
            {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "margin": "0.5"},
        ],
    )
    a, b = read_preference(path)
    assert a == PreferencePair(
        [{"role": "user", "content": "Fix\n\nteh cat"}], "the cat", "cat", None, f"{path}:1"
    )
    assert b.prompt_messages == [{"role": "user", "content": "Hi?"}] and b.margin == 0.5


def test_chat_form_shares_the_prompt_prefix(tmp_path):
    turns = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    path = _jsonl(
        tmp_path,
        [
            {
                "chosen": turns + [{"role": "assistant", "content": "Hello!"}],
                "rejected": turns + [{"role": "assistant", "content": "What."}],
            },
            {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": "Hey"}],
                "rejected": [{"role": "assistant", "content": "No"}],
            },
        ],
    )
    a, b = read_preference(path)
    assert a.prompt_messages == turns == b.prompt_messages
    assert (a.chosen, a.rejected, b.chosen, b.rejected) == ("Hello!", "What.", "Hey", "No")


def test_bad_records_name_file_and_line(tmp_path):
    path = _jsonl(
        tmp_path, [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "x"}]
    )
    with pytest.raises(
        DataError, match=r"p.jsonl:2: missing field 'rejected'.*has: prompt, chosen"
    ):
        read_preference(path)
    u = [{"role": "user", "content": "q"}]
    path = _jsonl(
        tmp_path,
        [
            {
                "chosen": u + [{"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "other"},
                    {"role": "assistant", "content": "b"},
                ],
            }
        ],
    )
    with pytest.raises(DataError, match=r"p.jsonl:1: 'chosen' and 'rejected' must share"):
        read_preference(path)
    path = _jsonl(
        tmp_path,
        [
            {
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ],
    )
    with pytest.raises(DataError, match=r"p.jsonl:1: no prompt"):
        read_preference(path)
    path = _jsonl(tmp_path, [{"prompt": "a", "chosen": "x", "rejected": "y", "margin": "big"}])
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'margin' must be a number"):
        read_preference(path)


def test_identical_pairs_are_dropped_with_a_warning_and_an_empty_set_is_an_error(tmp_path, caplog):
    path = _jsonl(
        tmp_path,
        [
            {"prompt": "a", "chosen": "x", "rejected": "x"},
            {"prompt": "b", "chosen": "x", "rejected": "y"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="tunesmith.data.preference"):
        pairs = read_preference(path)
    assert len(pairs) == 1 and "1 of 2 preference records have chosen identical" in caplog.text
    assert "p.jsonl:1" in caplog.text
    path = _jsonl(tmp_path, [{"prompt": "a", "chosen": "x", "rejected": "x"}])
    with pytest.raises(DataError, match="no usable preference pairs"):
        read_preference(path)


def test_encode_pair_uses_the_sft_template_and_masks_the_prompt():
    tok = tiny_tokenizer()
    pair = PreferencePair([{"role": "user", "content": "Hi"}], "Hello.", "No.")
    enc = encode_pair(pair, tok, max_length=256)
    sft = encode_record({"prompt": "Hi", "completion": "Hello.", SOURCE: "x:1"}, tok, "instruction")
    assert enc["chosen_input_ids"] == sft.input_ids and enc["chosen_labels"] == sft.labels
    assert (
        tok.decode(enc["prompt_ids"]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(enc["rejected_ids"]) == "No.<|im_end|>"
    assert enc["rejected_input_ids"][: len(enc["prompt_ids"])] == enc["prompt_ids"]
    assert enc["rejected_labels"] == [IGNORE] * len(enc["prompt_ids"]) + enc["rejected_ids"]


def test_encode_pair_without_chat_template_uses_the_sft_fallback():
    tok = tiny_tokenizer(chat_template=False)
    enc = encode_pair(PreferencePair([{"role": "user", "content": "Hi"}], "Yes", "No"), tok, 256)
    sft = encode_record({"prompt": "Hi", "completion": "Yes", SOURCE: "x:1"}, tok, "instruction")
    assert enc["chosen_input_ids"] == sft.input_ids and enc["chosen_labels"] == sft.labels


def test_truncation_keeps_the_prompt_end_then_cuts_responses():
    tok = tiny_tokenizer()
    pair = PreferencePair(
        [{"role": "user", "content": "x" * 50 + "END"}], "short", "a much longer answer"
    )
    full = encode_pair(pair, tok, 1000)
    enc, stats = encode_pairs([pair], tok, 50)  # prompt 72 tokens, longest response 21
    assert len(enc[0]["chosen_input_ids"]) <= 50 and len(enc[0]["rejected_input_ids"]) == 50
    assert (
        enc[0]["prompt_ids"] == full["prompt_ids"][-len(enc[0]["prompt_ids"]) :]
    )  # the end is kept
    assert "END" in tok.decode(enc[0]["prompt_ids"])
    assert enc[0]["rejected_ids"] == full["rejected_ids"]  # room for both responses whole
    assert (stats.truncated, stats.prompt_cut, stats.response_cut) == (1, 1, 0)
    enc, stats = encode_pairs(
        [pair], tok, 20
    )  # responses too long: prompt keeps half, responses cut
    assert len(enc[0]["prompt_ids"]) == 10 and len(enc[0]["rejected_input_ids"]) == 20
    assert (stats.truncated, stats.prompt_cut, stats.response_cut) == (1, 1, 1)


def test_collate_pairs_puts_chosen_first_padded_right():
    tok = tiny_tokenizer()
    pairs = [
        PreferencePair([{"role": "user", "content": "Hi"}], "Hello there.", "No.", 1.0),
        PreferencePair(
            [{"role": "user", "content": "What is two plus two?"}], "Four.", "Five!", 0.0
        ),
    ]
    enc = [encode_pair(p, tok, 256) for p in pairs]
    batch = collate_pairs(enc, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["margin"].tolist() == [1.0, 0.0]
    order = [
        enc[0]["chosen_input_ids"],
        enc[1]["chosen_input_ids"],
        enc[0]["rejected_input_ids"],
        enc[1]["rejected_input_ids"],
    ]
    for row, ids in enumerate(order):
        n = len(ids)
        assert (
            batch["input_ids"][row, :n].tolist() == ids and batch["attention_mask"][row].sum() == n
        )
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all() and (
            batch["labels"][row, n:] == IGNORE
        ).all()
    # Summed response log-probs of the batch equal those of each row alone (padding carries nothing).
    model = tiny_llama()
    logps = response_logps(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
        batch["labels"],
    )
    for row, ids in enumerate(order):
        one = collate_pairs([enc[row % 2]], tok.pad_token_id)
        alone = response_logps(model(input_ids=one["input_ids"]).logits, one["labels"])[row // 2]
        torch.testing.assert_close(logps[row], alone, atol=1e-5, rtol=1e-5)
    assert "margin" not in collate_pairs(
        [encode_pair(PreferencePair(pairs[0].prompt_messages, "a", "b"), tok, 64)], 0
    )


def test_kto_reader_encode_and_mismatched_kl_batch(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"prompt": "Hi", "completion": "Hello.", "label": True},
            {"instruction": "Sum", "input": "2+2", "completion": "5", "label": "false"},
            {
                "prompt": [{"role": "user", "content": "Yo"}],
                "completion": [{"role": "assistant", "content": "Hey"}],
                "label": 1,
            },
        ],
    )
    examples = read_kto(path)
    assert examples[1] == KtoExample(
        [{"role": "user", "content": "Sum\n\n2+2"}], "5", False, f"{path}:2"
    )
    assert [e.desirable for e in examples] == [True, False, True]
    tok = tiny_tokenizer()
    enc = [encode_kto(e, tok, 256) for e in examples]
    kl = kl_mismatched(enc)
    assert (
        kl[0]["input_ids"] == enc[0]["prompt_ids"] + enc[2]["completion_ids"]
    )  # TRL's rotation by one
    assert kl[1]["input_ids"] == enc[1]["prompt_ids"] + enc[0]["completion_ids"]
    batch = collate_kto(enc, tok.pad_token_id)
    assert (
        batch["desirable"].tolist() == [True, False, True] and batch["kl_input_ids"].shape[0] == 3
    )
    bad = _jsonl(tmp_path, [{"prompt": "Hi", "completion": "x", "label": "maybe"}], "k.jsonl")
    with pytest.raises(DataError, match=r"k.jsonl:1: field 'label' must be true"):
        read_kto(bad)


@pytest.mark.skipif(not RASBT.is_file(), reason="shared preference data set not present")
def test_rasbt_preference_file_reads_and_encodes():
    pairs = read_preference(RASBT)
    assert len(pairs) == 1094  # 1,100 records, 6 with chosen identical to rejected
    assert pairs[0].source.endswith("instruction-data-with-preference.json:record 1")
    assert pairs[0].prompt_messages[0]["content"].startswith("Evaluate the following phrase")
    assert pairs[0].prompt_messages[0]["content"].endswith("\n\nfreind --> friend")
    tok = tiny_tokenizer()
    enc, stats = encode_pairs(pairs[:64], tok, 256)
    assert stats.total == 64 and all(len(e["chosen_input_ids"]) <= 256 for e in enc)
    batch = collate_pairs(enc[:8], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 16 and (batch["labels"] != IGNORE).sum(1).min() > 0


def test_kto_reads_a_paired_record_as_one_desirable_and_one_undesirable_example(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"instruction": "Fix", "input": "teh", "chosen": "the", "rejected": "no, you fix it"},
            {"prompt": "Hi", "completion": "Hello.", "label": True},
        ],
        "mixed.jsonl",
    )
    examples = read_kto(path)
    assert [(e.completion, e.desirable) for e in examples] == [
        ("the", True),
        ("no, you fix it", False),
        ("Hello.", True),
    ]
    assert examples[0].prompt_messages == examples[1].prompt_messages
