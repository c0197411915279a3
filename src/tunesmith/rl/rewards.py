"""Where an on-policy task's reward comes from: `reward.model` (a reward run, or a
sequence-classification directory) or `reward.function: module:fn` (a verifiable reward).

Either way the result is score(records, completions) -> list of floats, one per completion.
A function follows TRL's convention: fn(prompts: list[str], completions: list[str], **fields),
where each field is the list of that record field over the batch (None where a record lacks it).
"""

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, TrainingError

Scorer = Callable[[list, list], list]  # (PromptRecords, completions) -> rewards


def reward_scorer(reward_cfg) -> Scorer:
    """The scorer that reward.model or reward.function names (exactly one of them)."""
    if bool(reward_cfg.model) == bool(reward_cfg.function):
        raise ConfigError(
            "give exactly one of reward.model (a reward run's output.dir or a "
            "sequence-classification directory) and reward.function (module:fn)"
        )
    if reward_cfg.function:
        return function_scorer(reward_cfg.function)
    return model_scorer(reward_cfg.model)


def function_scorer(spec: str) -> Scorer:
    fn = import_function(spec)

    def score(records: list, completions: list) -> list:
        names = sorted({k for r in records for k in r.fields})
        fields = {k: [r.fields.get(k) for r in records] for k in names}
        rewards = fn(prompts=[r.text for r in records], completions=list(completions), **fields)
        return checked_rewards(rewards, len(completions), spec)

    return score


def model_scorer(path: str) -> Scorer:
    from ..recipes.reward import load_reward_scorer

    scorer = load_reward_scorer(path)

    def score(records: list, completions: list) -> list:
        rewards = scorer([r.text for r in records], list(completions))
        return checked_rewards(rewards, len(completions), path)

    return score


def import_function(spec: str) -> Callable:
    """The callable of `module:fn`. A module file in the working directory is loaded from there,
    afresh each time (so two runs in one process with different rewards.py files each get their
    own); otherwise the module is imported from the Python path."""
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise ConfigError(
            f"reward.function must be module:fn (e.g. rewards:exact_match), got {spec!r}"
        )
    cwd = Path.cwd()
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))  # for the module's own imports of its neighbours
    try:
        module = _load_module(module_name, cwd / (module_name.replace(".", "/") + ".py"))
    except Exception as e:  # the user's module: any error in it is theirs to see in one line
        raise ConfigError(f"reward.function {spec}: cannot import {module_name!r}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function {spec}: {module_name} has no function {fn_name!r}")
    return fn


def _load_module(name: str, local_file: Path):
    if not local_file.is_file():
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, local_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked_rewards(rewards, n: int, source: str) -> list:
    try:
        values = [float(r) for r in rewards]
    except (TypeError, ValueError):
        raise TrainingError(
            f"reward {source} must return a list of numbers, got {type(rewards).__name__}"
        ) from None
    if len(values) != n:
        raise TrainingError(f"reward {source} returned {len(values)} rewards for {n} completions")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise TrainingError(f"reward {source} returned a non-finite reward ({bad[0]})")
    return values
