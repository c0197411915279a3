import pytest

from tunesmith.evaluation import contains_match, exact_match, rouge_l


def test_exact_and_contains_normalise_case_and_space():
    assert exact_match(["  Paris\n", "rome"], ["paris", "Madrid"]) == 0.5
    assert contains_match(["It is Paris.", "no"], ["paris", "yes"]) == 0.5


def test_rouge_l_on_hand_computed_cases():
    # LCS("the cat sat on mat", "the cat is on the mat") = the cat on mat = 4; P = 4/5, R = 4/6.
    assert rouge_l(["the cat sat on mat"], ["the cat is on the mat"]) == pytest.approx(
        2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)
    )
    assert rouge_l(["a b c"], ["a b c"]) == 1.0
    assert rouge_l(["x y"], ["a b"]) == 0.0
