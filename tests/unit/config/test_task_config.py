import pytest

from tunesmith import load_config
from tunesmith.errors import ConfigError


def test_task_section_defaults_keep_sft_and_parse_classification_keys(tmp_path):
    assert load_config(None, []).task.type == "sft"
    cfg = load_config(
        None,
        [
            "task.type=classify",
            "task.mode=prompt",
            "task.label_words={spam: spam, ham: normal}",
            "data.text_field=sms",
            "data.label_field=y",
            "data.text_pair_field=ctx",
            "data.columns=[y, sms]",
            "data.file_type=tsv",
            "data.balance=undersample",
        ],
    )
    assert cfg.task.label_words == {"spam": "spam", "ham": "normal"}
    assert (cfg.data.text_field, cfg.data.label_field, cfg.data.text_pair_field) == (
        "sms",
        "y",
        "ctx",
    )
    assert cfg.data.columns == ["y", "sms"] and cfg.data.balance == "undersample"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("task.type=regress", "unknown task.type .regress."),
        (
            "task.type=classify task.mode=knn",
            "task.mode must be one of features, head, icl, prompt, got 'knn'",
        ),
        ("task.trainable=some", "task.trainable must be one of"),
        ("task.template={text} is spam", "answer slot {answer}"),
        ("task.label_words=[a, b]", "task.label_words must map labels to words"),
        ("task.type=classify task.mode=icl icl.shots=0", "icl.shots must be >= 1"),
        (
            "task.type=classify task.mode=icl icl.selection=best",
            "icl.selection must be one of random, similar",
        ),
        (
            "task.type=classify task.mode=features features.classifier=svm",
            "features.classifier must be one of",
        ),
        (
            "task.type=classify features.layer=2",
            "section 'features' does not apply to task.type=classify task.mode=head",
        ),
        ("data.balance=smoot", "data.balance must be one of none, undersample, oversample"),
        ("data.file_type=xls", "data.file_type must be"),
    ],
)
def test_bad_classification_settings_are_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        load_config(
            None, override.split(" ") if override.startswith("task.type=classify ") else [override]
        )


def test_mode_sections_are_plug_in_sections_of_the_classify_task():
    from tunesmith.tasks import get_task

    spec = get_task("classify")
    assert {"features", "prompt", "icl"} <= set(spec.sections)
    cfg = load_config(None, ["task.type=classify", "task.mode=icl", "icl.shots=2"])
    assert cfg.icl.shots == 2 and "features" not in cfg.plugins
    assert load_config(None, ["task.type=classify", "task.mode=head"]).plugins == {}
