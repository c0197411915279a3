import json
from collections import Counter

import pytest

from tunesmith.config.schema import DataConfig
from tunesmith.data.classification import (
    LabelledExample,
    class_weights,
    label_names,
    load_labelled_splits,
    oversample,
    read_labelled,
    undersample,
)
from tunesmith.errors import DataError


def _tsv(tmp_path, n_spam=20, n_ham=80):
    lines = [f'spam\tWIN "cash" now {i}' for i in range(n_spam)] + [
        f"ham\tsee you at {i}" for i in range(n_ham)
    ]
    path = (
        tmp_path / "sms"
    )  # no suffix, no header, a stray quote: read with data.file_type + data.columns
    path.write_text("\n".join(lines) + "\n")
    return path


def test_headerless_tsv_with_columns_keeps_quotes(tmp_path):
    cfg = DataConfig(train=str(_tsv(tmp_path)), file_type="tsv", columns=["label", "text"])
    examples = read_labelled(cfg.train, cfg)
    assert len(examples) == 100 and examples[0] == LabelledExample(
        'WIN "cash" now 0', "spam", None, examples[0].source
    )


def test_missing_label_column_names_what_the_record_has(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"sms": "hi", "y": "ham"}) + "\n")
    with pytest.raises(
        DataError, match=r"no field 'label' \(data.label_field\); the record has: sms, y"
    ):
        read_labelled(str(path), DataConfig(train=str(path), text_field="sms"))


def test_undersample_then_stratified_split_is_balanced_everywhere(tmp_path):
    cfg = DataConfig(
        train=str(_tsv(tmp_path)), file_type="tsv", columns=["label", "text"], balance="undersample"
    )
    splits = load_labelled_splits(cfg, seed=3)
    assert splits.labels == ["ham", "spam"]
    counts = [Counter(e.label for e in part) for part in (splits.train, splits.eval, splits.test)]
    assert counts == [Counter(ham=14, spam=14), Counter(ham=2, spam=2), Counter(ham=4, spam=4)]


def test_oversampling_happens_after_the_split_on_train_only(tmp_path):
    cfg = DataConfig(
        train=str(_tsv(tmp_path)), file_type="tsv", columns=["label", "text"], balance="oversample"
    )
    splits = load_labelled_splits(cfg, seed=3)
    assert Counter(e.label for e in splits.train) == Counter(ham=56, spam=56)
    assert Counter(e.label for e in splits.test) == Counter(
        ham=16, spam=4
    )  # natural balance, stratified


def test_resampling_and_class_weights():
    data = [LabelledExample(str(i), "a") for i in range(6)] + [
        LabelledExample("b0", "b"),
        LabelledExample("b1", "b"),
    ]
    assert Counter(e.label for e in undersample(data, 0)) == Counter(a=2, b=2)
    assert Counter(e.label for e in oversample(data, 0)) == Counter(a=6, b=6)
    assert class_weights(data, ["a", "b"]) == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])


def test_unseen_eval_labels_and_label_order(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\nx,pos\ny,neg\n")
    test.write_text("text,label\nz,pos\nw,maybe\n")
    with pytest.raises(
        DataError,
        match=r"test data has label\(s\) the training data never had: 'maybe'.*test.csv:3",
    ):
        load_labelled_splits(DataConfig(train=str(train), test=str(test)), seed=0)
    assert label_names(
        [LabelledExample("x", "pos"), LabelledExample("y", "neg")], ["pos", "neg"]
    ) == ["pos", "neg"]
    with pytest.raises(DataError, match="not in task.labels"):
        label_names([LabelledExample("x", "pos"), LabelledExample("y", "neg")], ["pos"])
    with pytest.raises(DataError, match="at least two classes"):
        label_names([LabelledExample("x", "pos")])
