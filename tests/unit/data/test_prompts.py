"""Prompts for PPO/GRPO from preference, instruction and chat records."""

import json

import pytest

from tunesmith.data.prompts import read_prompts
from tunesmith.errors import DataError


def _write(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preference_instruction_and_chat_records_all_give_prompts(tmp_path):
    path = _write(
        tmp_path,
        [
            {"instruction": "Fix", "input": "teh", "chosen": "the", "rejected": "no"},
            {"prompt": "Say hi", "output": "hi"},
            {
                "messages": [
                    {"role": "user", "content": "one"},
                    {"role": "assistant", "content": "1"},
                    {"role": "user", "content": "two"},
                    {"role": "assistant", "content": "2"},
                ]
            },
        ],
    )
    prompts = read_prompts(path, system_prompt="Be brief.")
    assert [p.text for p in prompts] == ["Fix\n\nteh", "Say hi", "two"]
    assert prompts[0].fields == {"chosen": "the", "rejected": "no"}
    assert prompts[1].fields == {"output": "hi"}
    assert [m["role"] for m in prompts[2].messages] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"text": "plain"}, r"p.jsonl:1: no prompt"),
        ({"prompt": "  "}, "'prompt' is empty"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "no user turn"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]"),
    ],
)
def test_a_record_without_a_prompt_is_a_located_error(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        read_prompts(_write(tmp_path, [row]))
