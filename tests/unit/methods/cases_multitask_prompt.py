"""Matrix cases for multitask prompt tuning: the shared prompt (n x D) plus, per task, factors
of n x r and r x D. No identity at init: the virtual tokens change every output."""

from tests.unit.methods.matrix_support import Case
from tunesmith.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig


def mpt_params(model, n, tasks, r):
    d = model.config.hidden_size
    return n * d + tasks * (n * r + r * d)


CASES = [
    Case(
        "multitask_prompt_tuning",
        "llama",
        MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=3, num_ranks=2),
        lambda m: mpt_params(m, 4, 3, 2),
        identity_at_init=False,
    ),
    Case(
        "multitask_prompt_tuning",
        "gpt2",
        MultitaskPromptTuningConfig(num_virtual_tokens=3, num_tasks=2),
        lambda m: mpt_params(m, 3, 2, 1),
        identity_at_init=False,
    ),
    Case(
        "multitask_prompt_tuning",
        "bert",
        MultitaskPromptTuningConfig(num_virtual_tokens=3, num_tasks=2),
        lambda m: mpt_params(m, 3, 2, 1),
        identity_at_init=False,
    ),
]
