import pytest

from tunesmith.config.loader import load_config
from tunesmith.config.schema import TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.methods import config_classes
from tunesmith.methods.lora import LoraConfig


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_dotted_overrides_build_typed_configs(tmp_path):
    path = _write(tmp_path, "method:\n  name: lora\n  r: 4\ntrain:\n  lr: 1e-4\n  batch_size: 2\n")
    cfg = load_config(
        path,
        ["train.max_steps=7", "method.target_modules=[q_proj,k_proj]", "data.train=x.jsonl"],
        config_classes(),
    )
    assert isinstance(cfg.method, LoraConfig)
    assert cfg.method.r == 4 and cfg.method.target_modules == ["q_proj", "k_proj"]
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and cfg.data.train == "x.jsonl"


def test_unknown_keys_are_all_reported_with_did_you_mean(tmp_path):
    path = _write(
        tmp_path, "train:\n  learning_rate: 1\n  bach_size: 3\nmethod:\n  name: lora\n  rank: 4\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, [], config_classes())
    msg = str(err.value)
    assert (
        "train.learning_rate" in msg
        and "did you mean 'train.batch_size'" in msg
        and "method.rank" in msg
    )
    assert "did you mean 'method.r'" in msg or "method.rank" in msg


def test_unknown_method_and_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'lroa'.*did you mean 'lora'"):
        load_config(None, ["method.name=lroa"], config_classes())
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_config(None, ["trian.lr=1"], config_classes())


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.batch_size=abc", "train.batch_size: expected int"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("method.r=0", "method.r must be >= 1"),
        ("train.scheduler=step", "train.scheduler must be"),
        ("data.split=[0.5,0.5,0.5]", "data.split"),
        ("lr=3", "section.key=value"),
    ],
)
def test_bad_values_are_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, [override], config_classes())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr("tunesmith.config.schema.has_native_bf16", lambda: native)
    assert TrainConfig().precision == ("bf16" if native else "fp32")
    assert TrainConfig(precision="fp32").precision == "fp32"


def test_explicit_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    monkeypatch.setattr("tunesmith.config.fields.has_native_bf16", lambda: False)
    assert TrainConfig(precision="bf16").precision == "bf16"
    assert "no native bf16 instructions" in caplog.text
