"""Distillation end to end on tiny models: loss identities, the top-k cache, the cut student,
sequence-level and on-policy batches, exact resume."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tunesmith
from tests.tiny import save_tiny_model, tiny_llama
from tunesmith.data import collate
from tunesmith.errors import ConfigError
from tunesmith.objectives.distill_step import CachedTeacher, LiveTeacher, distill_loss
from tunesmith.recipes import distill, distill_teacher
from tunesmith.recipes.common import build_model


@pytest.fixture
def task(tmp_path, cache_dir):
    """(teacher dir with 4 blocks, instruction data file)."""
    rng = random.Random(0)
    rows = []
    for _ in range(24):
        word = "".join(rng.choice("abcdef") for _ in range(rng.randint(3, 6)))
        rows.append({"instruction": f"repeat {word}", "output": f"{word} {word}"})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _sharp_teacher(tmp_path / "teacher"), tmp_path / "data.jsonl"


def _sharp_teacher(path):
    """A 4-block tiny model whose next-token distributions are far from uniform (random tiny
    models predict nearly uniform ones, which leaves a student nothing to learn)."""
    model = tiny_llama(num_hidden_layers=4)
    with torch.no_grad():
        model.model.norm.weight.mul_(25.0)
    return save_tiny_model(path, model)


def _cfg(task, out, *overrides):
    teacher, data = task
    base = [
        "task.type=distill",
        f"model.name={teacher}",
        "model.keep_layers=every_other",
        f"distill.teacher={teacher}",
        f"data.train={data}",
        "data.max_length=64",
        "data.split=[0.75, 0.125, 0.125]",
        "method.name=full",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.lr=1e-2",
        "train.log_every=1",
        "train.precision=fp32",
        "eval.limit=2",
        "eval.max_new_tokens=4",
        "eval.batch_size=8",
        f"output.dir={out}",
    ]
    return tunesmith.load_config(None, [*base, *overrides])


def _batch(cfg):
    from tunesmith.data import load_splits

    student, tokenizer = build_model(cfg)
    examples = load_splits(cfg.data, tokenizer, cfg.train.seed).train[:4]
    return student, tokenizer, examples, collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_a_student_equal_to_its_teacher_has_loss_zero(task, tmp_path, loss):
    cfg = _cfg(
        task, tmp_path / "out", "model.keep_layers=", f"distill.loss={loss}", "distill.alpha=0"
    )
    student, tokenizer, _, batch = _batch(cfg)
    teacher = distill_teacher.load_teacher(cfg.distill, "float32", student, tokenizer)
    spec = distill.spec_of(cfg.distill)
    value, n, _ = distill_loss(student, batch, LiveTeacher(teacher, batch, 1.0), spec)
    assert n > 0 and abs(float(value)) < 1e-6
    cut = _cfg(task, tmp_path / "cut", f"distill.loss={loss}", "distill.alpha=0")
    cut_student, *_ = _batch(cut)
    value, _, _ = distill_loss(cut_student, batch, LiveTeacher(teacher, batch, 1.0), spec)
    assert float(value) > 1e-3  # a different student is not at zero


def test_the_cache_with_every_token_gives_the_on_the_fly_loss(task, tmp_path):
    cfg = _cfg(task, tmp_path / "out", "distill.cache_top_k=128", "distill.temperature=2.0")
    student, tokenizer, examples, batch = _batch(cfg)
    teacher = distill_teacher.load_teacher(cfg.distill, "float32", student, tokenizer)
    cache = distill_teacher.build_cache(teacher, examples, cfg.distill, tokenizer.pad_token_id, 3)
    spec = distill.spec_of(cfg.distill)
    live, _, _ = distill_loss(student, batch, LiveTeacher(teacher, batch, 2.0), spec)
    cached, _, _ = distill_loss(student, batch, CachedTeacher(*cache.rows([0, 1, 2, 3])), spec)
    assert float(live) > 0.01
    assert float(cached) == pytest.approx(float(live), abs=1e-5)


def test_training_lowers_the_divergence_and_saves_a_plain_student(task, tmp_path):
    cfg = _cfg(task, tmp_path / "out", "distill.alpha=0", "train.max_steps=8", "train.lr=1e-3")
    metrics = distill.run(cfg)
    log = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    kd = [r["kd_loss"] for r in log if "kd_loss" in r]
    assert kd[-1] < 0.8 * kd[0]
    assert metrics["teacher_in_memory"] is True and "test_loss" in metrics
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out/student", local_files_only=True)
    assert student.config.num_hidden_layers == 2


def test_a_matching_cache_is_reused_without_loading_the_teacher(task, tmp_path, monkeypatch):
    first = distill.run(_cfg(task, tmp_path / "a", "distill.cache_top_k=8"))
    assert first["teacher_in_memory"] is False and first["teacher_cache_mb"] > 0
    cache = tmp_path / "a/teacher_cache"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its cache matches")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    second = distill.run(
        _cfg(task, tmp_path / "b", "distill.cache_top_k=8", f"distill.cache_dir={cache}")
    )
    assert second["train_loss"] == pytest.approx(first["train_loss"], abs=1e-6)
    with pytest.raises(AssertionError, match="was loaded"):  # other settings: rebuilt
        distill.run(
            _cfg(task, tmp_path / "c", "distill.cache_top_k=4", f"distill.cache_dir={cache}")
        )


def test_sequence_level_trains_on_the_teachers_answers(task, tmp_path, monkeypatch):
    import tunesmith.evaluation as evaluation

    def fixed_answers(model, tokenizer, prompts, *args, **kwargs):
        return ["zz"] * len(prompts)

    monkeypatch.setattr(evaluation, "generate", fixed_answers)
    cfg = _cfg(task, tmp_path / "out", "distill.sequence_level=true")
    student, tokenizer, examples, _ = _batch(cfg)
    teacher = distill_teacher.load_teacher(cfg.distill, "float32", student, tokenizer)
    (tmp_path / "out").mkdir()
    rewritten = distill.with_teacher_answers(examples, teacher, tokenizer, cfg)
    answer = tokenizer.decode([t for t in rewritten[0].labels if t != -100])
    assert answer == "zz<|im_end|>"
    assert rewritten[0].prompt_messages == examples[0].prompt_messages
    assert (tmp_path / "out/teacher_answers.json").is_file()


def test_on_policy_batches_are_student_samples(task, tmp_path):
    cfg = _cfg(task, tmp_path / "out", "distill.lmbda=1.0", "distill.max_new_tokens=3")
    student, tokenizer, examples, _ = _batch(cfg)
    items = [distill.Indexed(e, i) for i, e in enumerate(examples)]
    batch = distill.collate_distill(items, tokenizer.pad_token_id)
    [planned] = distill.on_policy_updates(student, [batch], tokenizer, cfg.distill)
    assert planned[0]["on_policy"] == 1.0
    responses = (planned[0]["labels"] != -100).sum(1)
    assert 1 <= int(responses.min()) and int(responses.max()) <= 3
    off = _cfg(task, tmp_path / "off", "distill.lmbda=0").distill
    assert distill.on_policy_updates(student, [batch], tokenizer, off)[0][0] is batch


@pytest.mark.parametrize(
    "mode", [["distill.cache_top_k=16"], ["distill.lmbda=0.5", "distill.max_new_tokens=3"]]
)
def test_resume_after_interrupt_ends_with_identical_weights(task, tmp_path, monkeypatch, mode):
    args = ["train.max_steps=6", "train.save_every=1", "method.name=lora", "method.r=2", *mode]
    distill.run(_cfg(task, tmp_path / "a", *args))
    calls = {"n": 0}
    original = distill.distill_loss

    def dies_on_step_4(model, batch, targets, spec):
        calls["n"] += 1
        if calls["n"] == 4 and model.training:
            raise KeyboardInterrupt
        return original(model, batch, targets, spec)

    monkeypatch.setattr(distill, "distill_loss", dies_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        distill.run(_cfg(task, tmp_path / "b", *args))
    monkeypatch.setattr(distill, "distill_loss", original)
    distill.run(_cfg(task, tmp_path / "b", *args))
    wa, wb = (load_file(str(tmp_path / p / "adapter_model.safetensors")) for p in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("distill.loss=kl", "distill.loss must be one of"),
        ("distill.alpha=1.5", "distill.alpha must be in"),
        ("distill.temperature=0", "distill.temperature must be > 0"),
        ("data.completion_only=false", "completion_only=true"),
        ("model.keep_layers=half", "every_other or a list"),
    ],
)
def test_bad_distill_settings_are_config_errors(task, tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _cfg(task, tmp_path, override)


def test_a_teacher_with_another_vocabulary_is_refused(task, tmp_path):
    other = save_tiny_model(tmp_path / "other", tiny_llama(vocab_size=96))
    with pytest.raises(ConfigError, match="share the student's tokenizer"):
        distill.run(_cfg(task, tmp_path / "out", f"distill.teacher={other}"))
