import pytest
import torch
from safetensors.torch import save_file

from kdsearch.exceptions import CheckpointError, TeacherError
from kdsearch.spaces import create_model
from kdsearch.teacher import load_state_dict, load_teacher
from kdsearch.training import Recipe

TINY = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}


def tiny_teacher(num_classes=10, in_chans=3):
    return create_model(TINY, num_classes=num_classes, in_chans=in_chans)


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model", "module_prefix", "safetensors"])
def test_checkpoint_layouts(tmp_path, layout):
    state = tiny_teacher().state_dict()
    path = tmp_path / ("ck.safetensors" if layout == "safetensors" else "ck.pt")
    if layout == "raw":
        torch.save(state, path)
    elif layout == "state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif layout == "model":
        torch.save({"model": state, "optimizer": {}}, path)
    elif layout == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_corrupted_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save(tiny_teacher().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        load_state_dict(path)


def test_unknown_teacher_name_suggests(digits_task):
    with pytest.raises(TeacherError, match="Did you mean 'resnet101'"):
        load_teacher("resnet1011", digits_task, measure=False)


def test_callable_teacher_with_task_weights_is_not_prepared(digits_task, tmp_path):
    torch.manual_seed(0)
    model = tiny_teacher(10, 1)
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    teacher = load_teacher("tests.test_teacher:tiny_teacher", digits_task, weights=str(path), measure=False)
    assert not teacher.prepared and teacher.source == "checkpoint:teacher.pt"
    assert torch.equal(teacher.model.fc.weight, model.fc.weight)


def test_checkpoint_of_another_architecture_is_refused(digits_task, tmp_path):
    other = create_model({**TINY, "width1": 16}, num_classes=10, in_chans=1)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(TeacherError, match="does not match the teacher architecture"):
        load_teacher("tests.test_teacher:tiny_teacher", digits_task, weights=str(path), measure=False)


def test_preparation_trains_and_is_cached(digits_task):
    recipe = Recipe(epochs=5, optimizer="adamw", lr=5e-3, weight_decay=0.0, warmup_epochs=0.5)
    first = load_teacher("tests.test_teacher:tiny_teacher", digits_task, recipe=recipe, measure=False)
    assert first.prepared and first.accuracy > 0.5  # 10 classes: chance is 0.1
    second = load_teacher("tests.test_teacher:tiny_teacher", digits_task, recipe=recipe, measure=True)
    assert any("reused from cache" in n for n in second.notes)
    assert second.accuracy == pytest.approx(first.accuracy)
    assert second.latency.p50_ms > 0


def test_a_candidate_config_file_is_a_teacher_trained_on_the_task_and_cached_by_its_content(digits_task, tmp_path):
    import json

    path = tmp_path / "teacher.json"
    path.write_text(json.dumps(TINY))
    recipe = Recipe(epochs=2, optimizer="adamw", lr=5e-3, weight_decay=0.0, warmup_epochs=0.5)
    first = load_teacher(str(path), digits_task, recipe=recipe, measure=False)
    assert first.source == "candidate" and first.prepared and first.accuracy > 0.3  # chance is 0.1
    assert sum(p.numel() for p in first.model.parameters()) == first.params == sum(
        p.numel() for p in tiny_teacher(in_chans=digits_task.in_chans).parameters())
    assert any("reused from cache" in n for n in load_teacher(str(path), digits_task, recipe=recipe, measure=False).notes)
    path.write_text(json.dumps({**TINY, "width3": 16}))  # the same file name, another network: trained anew
    edited = load_teacher(str(path), digits_task, recipe=recipe, measure=False)
    assert not any("reused from cache" in n for n in edited.notes) and edited.params < first.params


def test_a_teacher_candidate_json_that_does_not_parse_is_refused_naming_the_option(tmp_path):
    from kdsearch.teacher import check_network

    bad = tmp_path / "teacher.json"
    bad.write_text("{depth1: 3")
    with pytest.raises(TeacherError, match=r"^--teacher: .*is not valid JSON"):
        check_network(str(bad), "--teacher")
    with pytest.raises(TeacherError, match=r"^--teacher: Cannot read the candidate JSON"):
        check_network(str(tmp_path / "missing.json"), "--teacher")


def test_torchscript_teacher_file(digits_task, tmp_path):
    model = tiny_teacher(10, 1).eval()
    path = tmp_path / "teacher.ts"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 32, 32)), str(path))
    teacher = load_teacher(str(path), digits_task, measure=False)
    assert not teacher.prepared
    taps = teacher.taps(digits_task.sample_batch(4)[0])
    assert taps.logits.shape == (4, 10)


def test_torchscript_with_wrong_head_is_refused(digits_task, tmp_path):
    model = tiny_teacher(3, 1).eval()
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 32, 32)), str(path))
    with pytest.raises(TeacherError, match="outputs 3 classes but the task has 10"):
        load_teacher(str(path), digits_task, measure=False)


def test_timm_teacher_offline_goes_on_with_a_note(digits_task, monkeypatch):
    from kdsearch.teacher import teacher as mod

    monkeypatch.setattr(mod, "_hub_reachable", lambda *a, **k: False)
    notes = []
    model, source = mod._build_timm("resnet10t", digits_task, True, notes)
    assert source == "random-init" and "offline" in notes[0]
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_teacher_epochs_keep_the_recipe_of_the_weights_actually_obtained(monkeypatch, tmp_path, capsys):
    """Offline, a timm name gets random-init weights: --teacher-epochs must shorten the training-from-scratch
    recipe, not the fine-tuning one the pipeline guessed before load_teacher knew (lr 5e-4 instead of 2e-3)."""
    import json

    from kdsearch._util import cache_dir
    from kdsearch.cli import main
    from kdsearch.teacher import teacher as mod

    monkeypatch.setattr(mod, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(mod, "_cached_pretrained_file", lambda name: None)
    student = json.dumps({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 8, "width3": 8})
    code = main(["distill", "--teacher", "test_resnet", "--teacher-epochs", "1", "--student", student, "--data", "digits",
                 "--train-samples", "300", "--epochs", "1", "--out", str(tmp_path / "s"), "-q"])
    assert code == 0, capsys.readouterr().err
    metas = [json.loads(p.read_text()) for p in (cache_dir() / "teachers").glob("*.json")]
    recipe = next(m["recipe"] for m in metas if m["spec"] == "test_resnet")
    assert recipe["epochs"] == 1
    from kdsearch.data import load_task

    scratch = mod.default_teacher_recipe(load_task("digits", train_samples=300), "random-init")
    fine_tune = mod.default_teacher_recipe(load_task("digits", train_samples=300), "timm-pretrained")
    assert scratch.lr != fine_tune.lr
    assert recipe["lr"] == scratch.lr and recipe["warmup_epochs"] == scratch.warmup_epochs
