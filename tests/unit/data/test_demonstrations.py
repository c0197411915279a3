import random

import numpy as np

from tunesmith.data.demonstrations import (
    mdl_candidates,
    mdl_choice,
    one_per_class,
    random_demos,
    similar_demos,
    text_rng,
    vote_k,
)


def test_similar_puts_the_closest_last_and_respects_exclusions():
    sims = np.array([0.1, 0.9, 0.5, 0.7])
    assert similar_demos(sims, 2) == [3, 1]
    assert similar_demos(sims, 2, exclude=1) == [2, 3]
    assert similar_demos(sims, 5, among=[0, 2]) == [0, 2]


def test_random_demos_are_seeded_by_the_text_and_skip_the_input_itself():
    a = random_demos(10, 4, text_rng(1, "hello"), exclude=3)
    assert (
        a == random_demos(10, 4, text_rng(1, "hello"), exclude=3)
        and 3 not in a
        and len(set(a)) == 4
    )


def test_one_per_class_picks_one_demo_of_each_class():
    labels = [0, 0, 1, 1, 1]
    sims = np.array([0.2, 0.8, 0.1, 0.3, 0.9])
    assert one_per_class(labels, 2, sims, random.Random(0)) == [(1, 0), (4, 1)]
    assert one_per_class(labels, 2, sims, random.Random(0), exclude=4) == [(1, 0), (3, 1)]
    picks = one_per_class(labels, 2, None, random.Random(0))
    assert [labels[i] for i, _ in picks] == [0, 1]


def test_vote_k_covers_every_cluster_before_repeating_one():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    points = np.concatenate([c + rng.normal(size=(20, 3)) for c in centres])  # three clusters of 20
    chosen = vote_k(points, budget=3, k=15)
    assert sorted(i // 20 for i in chosen) == [0, 1, 2]


def test_mdl_picks_the_lowest_entropy_candidate_and_builds_k_subsets():
    assert mdl_choice(np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4]])) == 1
    sims = np.linspace(0, 1, 12)
    cands = mdl_candidates(sims, 3, 4, random.Random(0), exclude=11)
    assert len(cands) == 4 and cands[0] == [8, 9, 10]
    assert all(len(c) == 3 and 11 not in c and set(c) <= set(range(5, 11)) for c in cands)
