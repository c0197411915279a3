import json

import pytest

from tests.tiny import tiny_tokenizer
from tunesmith.config.schema import DataConfig
from tunesmith.data import IGNORE, collate, encode_records, load_splits, read_records, split_records
from tunesmith.errors import DataError


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


INSTR = [{"instruction": f"Repeat {i}", "input": "", "output": f"ok {i}"} for i in range(20)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_every_file_format_reads_the_same_records(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        _jsonl(path, INSTR)
    elif suffix == ".json":
        path.write_text(json.dumps(INSTR))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(INSTR), path)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text(
            "instruction{0}input{0}output\n".format(sep)
            + "".join(f"{r['instruction']}{sep}{sep}{r['output']}\n" for r in INSTR)
        )
    records = read_records(path)
    assert [(r["instruction"], r["output"]) for r in records] == [
        (r["instruction"], r["output"]) for r in INSTR
    ]
    assert records[0]["_source"].startswith(str(path))


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_records(path)
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'output' must be text"):
        encode_records(read_records(path), tiny_tokenizer(), "auto", 64)
    path.write_text('{"question": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: cannot tell the format"):
        encode_records(read_records(path), tiny_tokenizer(), "auto", 64)


def test_empty_and_missing_files_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="data.train is not set"):
        load_splits(DataConfig(), tiny_tokenizer(), 0)


def test_completion_only_labels_cover_the_answer_and_eos():
    tok = tiny_tokenizer()
    rec = {"instruction": "Say hi", "input": "now", "output": "hi!", "_source": "t:1"}
    (ex,), stats = encode_records([rec], tok, "auto", 256)
    target = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
    assert tok.decode(target) == "hi!<|im_end|>"
    assert tok.decode(ex.input_ids).startswith(
        "<|im_start|>user\nSay hi\n\nnow<|im_end|>\n<|im_start|>assistant\n"
    )
    (full,), _ = encode_records([rec], tok, "auto", 256, completion_only=False)
    assert full.labels == full.input_ids


def test_chat_masks_every_user_turn_and_fallback_template_has_eos():
    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ],
        "_source": "t:1",
    }
    tok = tiny_tokenizer()
    (ex,), _ = encode_records([rec], tok, "chat", 256)
    assert (
        tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
        == "b<|im_end|>d<|im_end|>"
    )
    plain = tiny_tokenizer(chat_template=False)
    (ex,), _ = encode_records([rec], plain, "chat", 256)
    assert (
        tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
        == "b<|im_end|>d<|im_end|>"
    )


def test_truncation_is_counted_and_examples_without_targets_dropped():
    tok = tiny_tokenizer()
    long = {"instruction": "x" * 100, "output": "yes", "_source": "t:1"}
    short = {"instruction": "x", "output": "yes", "_source": "t:2"}
    examples, stats = encode_records([long, short], tok, "auto", 60)
    assert stats.truncated == 1 and stats.dropped == 1 and len(examples) == 1
    assert all(len(e.input_ids) <= 60 for e in examples)


def test_seeded_split_is_70_10_20_deterministic_and_stratified():
    records = [{"id": i, "label": "spam" if i % 5 == 0 else "ham"} for i in range(1000)]
    a = split_records(records, [0.7, 0.1, 0.2], seed=3, label_key="label")
    b = split_records(records, [0.7, 0.1, 0.2], seed=3, label_key="label")
    assert [len(p) for p in a] == [700, 100, 200]
    assert [[r["id"] for r in p] for p in a] == [[r["id"] for r in p] for p in b]
    assert sum(r["label"] == "spam" for r in a[2]) == 40  # 20% of 200 spam
    assert len({r["id"] for p in a for r in p}) == 1000


def test_load_splits_splits_one_file(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", INSTR)
    splits = load_splits(DataConfig(train=str(path)), tiny_tokenizer(), seed=0)
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (14, 2, 4)


def test_collate_pads_right_and_masks_pads():
    tok = tiny_tokenizer()
    examples, _ = encode_records(
        [dict(r, _source="t") for r in INSTR[:2]]
        + [{"instruction": "longer prompt here", "output": "z", "_source": "t"}],
        tok,
        "auto",
        128,
    )
    batch = collate(examples, tok.pad_token_id)
    n = len(examples[0].input_ids)
    assert batch["attention_mask"][0].sum() == n
    assert (batch["labels"][0, n:] == IGNORE).all() and (
        batch["input_ids"][0, n:] == tok.pad_token_id
    ).all()
