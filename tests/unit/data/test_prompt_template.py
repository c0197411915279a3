import pytest

from tests.tiny import tiny_encoder_tokenizer, tiny_tokenizer
from tunesmith.data.classification import LabelledExample
from tunesmith.data.prompt_template import PromptTemplate, mask_fill
from tunesmith.errors import ConfigError


def test_slot_position_and_space_moving_into_the_label_word():
    tok = tiny_tokenizer()
    t = PromptTemplate(
        tok, "{text} It was {answer}.", ["neg", "pos"], {"neg": "bad", "pos": "good"}
    )
    assert [tok.decode(w) for w in t.words] == [" bad", " good"]
    r = t.render(LabelledExample("fun", "pos"), t.words[1])
    assert tok.decode(r.ids) == "fun It was good." and tok.decode(r.ids[r.slot :]) == " good."
    r = t.render(
        LabelledExample("fun", "pos"), [], stop_at_slot=True
    )  # what a causal LM sees before answering
    assert tok.decode(r.ids) == "fun It was" and r.slot == len(r.ids)


def test_demonstrations_come_first_filled_with_their_label_words_and_texts_are_truncated():
    tok = tiny_tokenizer()
    t = PromptTemplate(
        tok, "{text}:{answer}", ["neg", "pos"], {"neg": "n", "pos": "p"}, max_length=24
    )
    demos = [(LabelledExample("awful", "neg"), 0), (LabelledExample("great", "pos"), 1)]
    r = t.render(LabelledExample("a" * 50, "pos"), [], demos, stop_at_slot=True)
    text = tok.decode(r.ids)
    assert text.startswith("awful:n\ngreat:p\n") and text.endswith(":") and len(r.ids) <= 24


def test_encoder_template_keeps_cls_sep_and_masks_the_slot():
    tok = tiny_encoder_tokenizer()
    t = PromptTemplate(tok, "{text} is {answer}!", ["a", "b"], {"a": "x", "b": "yz"})
    r = t.render(LabelledExample("hi", "a"), mask_fill(tok, 2))
    assert tok.convert_ids_to_tokens(r.ids) == [
        "[CLS]",
        "h",
        "i",
        " ",
        "i",
        "s",
        "[MASK]",
        "[MASK]",
        "!",
        "[SEP]",
    ]
    assert r.slot == 6


@pytest.mark.parametrize(
    "words, multi, fragment",
    [
        ({"a": "é", "b": "x"}, True, "'é' \\(label 'a'\\) is not in the model's vocabulary"),
        ({"a": "xy", "b": "x"}, False, "'xy' \\(label 'a'\\) is 3 tokens"),
        ({"a": "x"}, True, "no word for label 'b'"),
    ],
)
def test_bad_label_words_are_config_errors(words, multi, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PromptTemplate(
            tiny_encoder_tokenizer(), "{text} {answer}", ["a", "b"], words, multi_token=multi
        )


def test_template_without_answer_slot_is_a_config_error():
    with pytest.raises(ConfigError, match="answer slot"):
        PromptTemplate(tiny_tokenizer(), "{text} It was", ["a", "b"], {"a": "x", "b": "y"})
