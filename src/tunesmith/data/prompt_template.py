"""Prompt templates for prompt-based classification and in-context learning.

A template such as "{text} This message is {answer}" is rendered in token space: each literal piece
and each text is tokenised on its own and the ids concatenated, so the answer slot's position is
known exactly and texts can be truncated without touching the template. A space before {answer}
moves into the label words (" spam"), as BPE tokenisers mark word starts that way.
Demonstrations (the template filled with a training text and its label word) go before the input.
"""

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError

SLOTS = ("{text}", "{text_pair}", "{answer}")


@dataclass(frozen=True)
class Rendered:
    ids: list  # token ids of the whole input
    slot: int  # position of the first answer token


class PromptTemplate:
    """Renders LabelledExamples with `tokenizer`; words[c] are the label word ids of class c.

    Raises ConfigError when the template lacks {text} or {answer}, when a label has no label word,
    or when a label word tokenises to nothing / unknown tokens (or to several tokens and
    multi_token is false).
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        labels: Sequence[str],
        label_words: dict,
        multi_token: bool = True,
        max_length: int = 256,
    ):
        if "{answer}" not in template or "{text}" not in template:
            raise ConfigError(
                f"task.template must contain {{text}} and the answer slot {{answer}}, got {template!r}"
            )
        self.tokenizer, self.max_length = tokenizer, max_length
        pieces = [p for p in re.split(r"(\{text\}|\{text_pair\}|\{answer\})", template) if p]
        slot = pieces.index("{answer}")
        space = slot > 0 and pieces[slot - 1] not in SLOTS and pieces[slot - 1].endswith(" ")
        if space:
            pieces[slot - 1] = pieces[slot - 1].rstrip(" ")
        self.pieces = [p if p in SLOTS else self._tok(p) for p in pieces]
        self.words = [
            self._word_ids(label, label_words, " " if space else "", multi_token)
            for label in labels
        ]
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self.separator = (
            [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else self._tok("\n")
        )

    def render(
        self, example, fill: Sequence[int], demos: Sequence[tuple] = (), stop_at_slot: bool = False
    ) -> Rendered:
        """The input for `example` with `fill` at its answer slot, after demonstrations `demos`
        ((example, class id) pairs, filled with their label words). stop_at_slot drops what follows
        the slot (a causal LM never sees it while predicting the answer)."""
        budget = self._text_budget(len(demos) + 1)
        ids = list(self.prefix)
        for demo, cls in demos:
            ids += self._fill(demo, self.words[cls], budget)[0] + self.separator
        body, offset = self._fill(example, fill, budget, stop_at_slot)
        slot = len(ids) + offset
        ids += body + ([] if stop_at_slot else list(self.suffix))
        return Rendered(ids, slot)

    def _fill(
        self, example, answer: Sequence[int], budget: int, stop_at_slot: bool = False
    ) -> tuple[list, int]:
        ids, slot = [], 0
        for piece in self.pieces:
            if piece == "{text}":
                ids += self._tok(example.text)[:budget]
            elif piece == "{text_pair}":
                ids += self._tok(example.pair or "")[:budget]
            elif piece == "{answer}":
                slot = len(ids)
                ids += list(answer)
                if stop_at_slot:
                    break
            else:
                ids += piece
        return ids, slot

    def _text_budget(self, segments: int) -> int:
        # The same for every class's fill, so all classes are scored on the same truncated text.
        answer = max(len(w) for w in self.words)
        fixed = sum(len(p) for p in self.pieces if p not in SLOTS) + answer + len(self.separator)
        texts = sum(p in ("{text}", "{text_pair}") for p in self.pieces)
        free = self.max_length - len(self.prefix) - len(self.suffix) - segments * fixed
        return max(4, free // (segments * texts))

    def _tok(self, text: str) -> list:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _word_ids(self, label: str, label_words: dict, space: str, multi_token: bool) -> list:
        if label not in label_words:
            raise ConfigError(
                f"task.label_words has no word for label {label!r}; it maps {label_words}. "
                f"Give one word per label, e.g. {{{label}: ...}}"
            )
        word = label_words[label]
        ids = self._tok(space + word)
        unk = self.tokenizer.unk_token_id
        if (
            not ids
            or (unk is not None and unk in ids)
            or _norm(self.tokenizer.decode(ids)) != _norm(word)
        ):
            raise ConfigError(
                f"task.label_words: {word!r} (label {label!r}) is not in the model's vocabulary "
                f"(tokens {ids}); choose another word"
            )
        if len(ids) > 1 and not multi_token:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ConfigError(
                f"task.label_words: {word!r} (label {label!r}) is {len(ids)} tokens {pieces}, and "
                f"task.multi_token is false; pick a single-token word or set task.multi_token=true"
            )
        return ids


def _special_tokens(tokenizer) -> tuple[list, list]:
    """The ids the tokenizer puts before and after a text (e.g. [CLS] ... [SEP], or a BOS)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def mask_fill(tokenizer, n: int) -> list:
    """n mask tokens (the answer slot of a masked LM). Raises ConfigError when there is no mask token."""
    if tokenizer.mask_token_id is None:
        raise ConfigError(
            "this encoder's tokenizer has no mask token, so prompt-based scoring cannot use it"
        )
    return [tokenizer.mask_token_id] * n


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()
