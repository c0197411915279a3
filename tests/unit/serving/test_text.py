"""Token -> text deltas: stop strings cut the text and are never half streamed."""

from tests.tiny import tiny_tokenizer
from tunesmith.serving.text import TextTracker

TOK = tiny_tokenizer()


def feed(text: str, stop=()):
    tracker = TextTracker(TOK, stop)
    deltas, stopped = [], False
    for token in TOK(text, add_special_tokens=False)["input_ids"]:
        delta, stopped = tracker.add(token)
        deltas.append(delta)
        if stopped:
            break
    if not stopped:
        deltas.append(tracker.flush())
    return deltas, stopped


def test_without_stop_strings_every_token_is_streamed_at_once():
    deltas, stopped = feed("abc")
    assert deltas == ["a", "b", "c", ""] and not stopped


def test_a_possible_stop_string_is_held_back_until_settled():
    deltas, stopped = feed("abxbcd", stop=["bc"])
    assert "".join(deltas) == "abx" and stopped
    assert deltas[:3] == ["a", "", "bx"]  # "b" waited: it could have started "bc"


def test_a_held_back_tail_that_never_became_a_stop_is_flushed():
    deltas, stopped = feed("ab", stop=["bc"])
    assert "".join(deltas) == "ab" and not stopped
