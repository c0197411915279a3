"""The task registry and the config sections tasks register."""

from dataclasses import dataclass

import pytest

import tunesmith
from tunesmith.config.fields import opt
from tunesmith.errors import ConfigError
from tunesmith.tasks import config_types, get_task, task_names
from tunesmith.tasks.registry import _REGISTRY, TaskSpec, register_task


def test_sft_and_classify_are_registered_and_duplicates_rejected():
    assert {"sft", "classify"} <= set(task_names())
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("sft"))
    with pytest.raises(ConfigError, match="unknown task.type 'nope'; registered: .*sft"):
        get_task("nope")


def test_public_load_config_keeps_method_keys_without_being_told_the_registry():
    cfg = tunesmith.load_config(None, ["method.name=lora", "method.r=4", "method.dropout=0.1"])
    assert (cfg.method.r, cfg.method.dropout) == (4, 0.1)
    with pytest.raises(ConfigError, match="method.rank"):
        tunesmith.load_config(None, ["method.rank=4"])


@dataclass
class _ToyConfig:
    beta: float = opt(0.1, "a toy setting")


@pytest.fixture
def toy_task():
    spec = TaskSpec(
        name="toy",
        help="a toy task",
        train=lambda cfg, progress: {},
        evaluate=lambda cfg, r: {},
        text=str,
        sections={"toy": _ToyConfig},
    )
    register_task(spec)
    yield spec
    del _REGISTRY["toy"]


def test_a_task_section_is_built_with_defaults_read_and_saved(toy_task, tmp_path):
    cfg = tunesmith.load_config(None, ["task.type=toy"])
    assert cfg.toy.beta == 0.1
    cfg = tunesmith.load_config(None, ["task.type=toy", "toy.beta=0.5"])
    assert cfg.toy.beta == 0.5
    from tunesmith.config.loader import config_to_dict, save_config

    assert config_to_dict(cfg)["toy"] == {"beta": 0.5} and "plugins" not in config_to_dict(cfg)
    save_config(cfg, tmp_path / "c.yaml")
    assert tunesmith.load_config(str(tmp_path / "c.yaml")).toy.beta == 0.5


def test_a_section_of_another_task_or_a_bad_key_is_an_error(toy_task):
    with pytest.raises(ConfigError, match="section 'toy' does not apply to task.type=sft"):
        tunesmith.load_config(None, ["toy.beta=0.5"])
    with pytest.raises(ConfigError, match="unknown key 'toy.bta'.*did you mean 'toy.beta'"):
        tunesmith.load_config(None, ["task.type=toy", "toy.bta=0.5"])
    with pytest.raises(AttributeError, match="no section 'dpo'"):
        tunesmith.load_config(None, ["task.type=toy"]).dpo
    assert "toy" in config_types().sections
