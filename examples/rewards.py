"""Verifiable rewards for `task.type: grpo` (or ppo) on the quick-start extraction task.

Use as `reward: {function: rewards:extraction_fields}` with this folder as the working directory
(or copy the file next to your config). A reward function gets the prompts, the sampled
completions and every other field of the prompt records as lists (here `output`, the expected
answer) and returns one float per completion.
"""

import re


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_match(prompts, completions, output, **fields):
    """1.0 when the answer equals the expected one (case and spacing aside), else 0.0."""
    return [float(_normalize(c) == _normalize(o)) for c, o in zip(completions, output)]


def extraction_fields(prompts, completions, output, **fields):
    """Share of the four fields (name | age | city | job) in the right place: partial credit, so a
    group of answers that are all wrong in different ways still tells the policy which is better.
    An exact answer scores 1.0."""
    rewards = []
    for completion, expected in zip(completions, output):
        want = [_normalize(f) for f in expected.split("|")]
        got = [_normalize(f) for f in completion.strip().split("\n")[0].split("|")]
        right = sum(g == w for g, w in zip(got, want))
        extra = max(len(got) - len(want), 0)  # more fields than asked for: not the format
        rewards.append(max(right - extra, 0) / len(want))
    return rewards
