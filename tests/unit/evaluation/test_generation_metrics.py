"""ROUGE-1/2/L equal to the rouge-score package; BLEU and chrF wired to sacrebleu; config errors."""

import sys

import pytest

from tunesmith import load_config
from tunesmith.config import schema
from tunesmith.errors import ConfigError
from tunesmith.evaluation import metrics

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")

# (prediction, reference): punctuation, case, repeats, digits, empty strings, no overlap, non-ASCII
PAIRS = [
    ("The cat sat on the mat.", "The cat is on the mat."),
    ("the the the the", "the cat"),
    ("Paris is the capital of France", "The capital of France is Paris"),
    ("", "something"),
    ("something", ""),
    ("", ""),
    ("completely different words", "nothing shared here"),
    ("It costs $5,000 in 2024!", "it costs 5000 dollars in 2024"),
    ("Hello, WORLD", "hello world"),
    ("a b c d e f g", "a c e g b d f"),
    ("New York-based start-ups", "new york based startups"),
    ("The quick brown fox jumps over the lazy dog", "A quick brown dog jumps over the lazy fox"),
    ("yes", "yes"),
    ("no", "yes"),
    ("café au lait", "cafe au lait"),
    ("one two three four five", "one two three"),
    ("one two", "one two three four five"),
    ("x y x y x y", "x y"),
    ("Answer: 42.", "42"),
    ("step 1: mix; step 2: bake", "Step 1 mix, step 2 bake for 20 minutes"),
]


def test_rouge_equals_rouge_score_on_twenty_pairs():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    expected = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in PAIRS:
        one = scorer.score(r, p)  # rouge_score takes (target, prediction)
        ours = metrics.rouge([p], [r])
        for key, our_key in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", "rouge_l")):
            assert ours[our_key] == pytest.approx(one[key].fmeasure, abs=1e-12), (p, r, key)
            expected[key] += one[key].fmeasure / len(PAIRS)
    got = metrics.rouge(preds, refs)
    assert got["rouge1"] == pytest.approx(expected["rouge1"], abs=1e-12)
    assert got["rouge2"] == pytest.approx(expected["rouge2"], abs=1e-12)
    assert metrics.rouge_l(preds, refs) == pytest.approx(expected["rougeL"], abs=1e-12)


def test_bleu_and_chrf_are_sacrebleu_corpus_scores_with_one_reference_each():
    preds = ["the cat sat on the mat", "a dog barked loudly at night"]
    refs = ["the cat is on the mat", "the dog barked at night"]
    assert metrics.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert metrics.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    # refs given the wrong way round would pair each prediction with both references
    assert metrics.bleu(preds, refs) != pytest.approx(
        sacrebleu.corpus_bleu(preds, [refs[::-1]]).score
    )
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)


def test_generation_metrics_keys():
    got = metrics.generation_metrics(["exact_match", "rouge", "bleu", "chrf"], ["a b"], ["a b"])
    assert set(got) == {"exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"}


def test_missing_sacrebleu_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(ConfigError, match=r"pip install 'tunesmith\[metrics\]'"):
        metrics.check_available(["rouge", "bleu"])
    metrics.check_available(["exact_match", "rouge"])  # ROUGE needs no package


def test_config_names_agree_and_unknown_metrics_are_refused():
    assert tuple(metrics.GENERATION_METRICS) == schema.GENERATION_METRICS
    assert load_config(None, ["eval.metrics=[rouge,bleu]"]).eval.metrics == ["rouge", "bleu"]
    with pytest.raises(ConfigError, match="eval.metrics must be a non-empty list of exact_match"):
        load_config(None, ["eval.metrics=[meteor]"])
