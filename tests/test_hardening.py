"""Faults and hostile input: truncated and booby-trapped checkpoints, a full disk, fuzzed spaces and budgets, and
markup in names that reach the HTML report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kdsearch.cli import main
from kdsearch.exceptions import KdsearchError
from kdsearch.spaces import create_model
from kdsearch.training import Recipe, fit

ROOT = Path(__file__).resolve().parents[1]
CFG = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}


def _trained_with_checkpoint(digits_task, checkpoint, epochs=2):
    torch.manual_seed(0)
    model = create_model(CFG, num_classes=10, in_chans=1)
    return fit(model, digits_task, Recipe(epochs=epochs, lr=0.1), checkpoint=checkpoint)


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncated", "pickled code", "not a checkpoint"])
def test_a_bad_checkpoint_is_set_aside_and_training_starts_over(digits_task, tmp_path, damage):
    checkpoint = tmp_path / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    if damage == "truncated":
        torch.save({"model": create_model(CFG, num_classes=10, in_chans=1).state_dict(), "epoch": 1}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # a crash mid-write
    elif damage == "pickled code":
        torch.save({"model": {}, "payload": _RunsCode(marker)}, checkpoint)
    else:
        checkpoint.write_text("hello")
    with pytest.warns(RuntimeWarning, match="was not loaded.*starts from the beginning"):
        result = _trained_with_checkpoint(digits_task, checkpoint)
    assert not marker.exists()  # weights_only: the payload was never run
    assert [h["epoch"] for h in result.history] == [1, 2] and result.accuracy > 0.2
    assert (tmp_path / "checkpoint.pt.rejected").exists()
    assert _trained_with_checkpoint(digits_task, checkpoint).history == result.history  # and it is not tried again


def test_a_full_disk_is_one_clear_error_and_the_previous_file_stays_whole(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: the write fails with EFBIG, as with ENOSPC."""
    target = tmp_path / "finalists.json"
    target.write_text('{"before": true}\n')
    code = f"""
import resource, sys, torch
from kdsearch._util import atomic_torch_save, atomic_write_json
from kdsearch.exceptions import KdsearchError
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    atomic_write_json({str(target)!r}, {{"x": "y" * 200_000}})
except KdsearchError as exc:
    print("JSON:", exc)
try:
    atomic_torch_save({{"w": torch.zeros(100_000)}}, {str(tmp_path / 'weights.pt')!r})
except KdsearchError as exc:
    print("TORCH:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("is full" in line and "free some space" in line for line in lines), out.stdout
    assert target.read_text() == '{"before": true}\n'  # the previous version is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finalists.json"]  # no temp file left behind


def test_a_full_disk_during_find_is_exit_2_and_one_line(tmp_path):
    code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))
from kdsearch.cli import main
sys.exit(main(["find", "--teacher", "tests.test_teacher:tiny_teacher", "--budget", "0.3Mparams", "--proxy", "params",
               "--trials", "4", "--top-k", "1", "--front", "0", "--controls", "0", "--epochs", "1", "--teacher-epochs", "1",
               "--out", {str(tmp_path / 'run')!r}, "-q"]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("kdsearch: error:")]
    assert len(errors) == 1 and ("is full" in errors[0] or "disk" in errors[0]), out.stderr[-2000:]


# --------------------------------------------------------------------------- fuzz: every input works or is one sentence
def _one_sentence(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message and len(message) < 600


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=24), st.from_regex(r"\A-?[0-9.e+]{0,6}\s?(ms|s|us|M?params|[MG]?flops|x|k|K)?\Z")))
def test_any_budget_string_parses_or_gives_one_sentence(text):
    from kdsearch.cost import parse_budget

    try:
        budget = parse_budget(text)
    except KdsearchError as exc:
        assert _one_sentence(str(exc)), repr(str(exc))
        return
    assert budget.limit > 0 and budget.metric in ("latency_p50_ms", "params", "flops")


_yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 600), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
_space_docs = st.fixed_dictionaries(
    {},
    optional={"family": st.sampled_from(["resnet_cifar", "nasbench201", "mobilenetv3", "timm", "nope", ""]),
              "choices": st.dictionaries(st.sampled_from(["depth1", "depth2", "width1", "kernel", "x", ""]), _yaml_values, max_size=4),
              "fixed": _yaml_values, "resolution": _yaml_values, "description": _yaml_values, "extra": _yaml_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(_space_docs.map(json.dumps), st.text(max_size=80), st.binary(max_size=40)))
@example(b"?")  # CI found it: YAML's complex-key marker gives {None: None}, a key that is not text
@example("? 1\n? a\nfamily: resnet_cifar\n")
@example("family: resnet_cifar\nchoices: {1: [1], depth1: [1]}\nfixed: {1: 2, true: 3}\n")
def test_any_search_space_yaml_loads_or_gives_one_sentence(tmp_path, text):
    from kdsearch.spaces import load_space

    path = tmp_path / "space.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        space = load_space(path)
    except KdsearchError as exc:
        assert _one_sentence(str(exc)), repr(str(exc))
        return
    assert space.size >= 1 and create_model(next(space.enumerate()), num_classes=3) is not None


def test_fuzzed_inputs_through_the_cli_are_exit_2_and_one_line(tmp_path, capsys):
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text('family: resnet_cifar\nchoices: {depth1: [1, "deep"]}\n')
    for argv in (["find", "--budget", "ten ms"], ["find", "--budget", "-5ms"], ["find", "--budget", "0x"],
                 ["find", "--budget", "10ms", "--space", str(bad_space)], ["find", "--budget", "1e999ms"]):
        assert main(argv + ["--out", str(tmp_path / "never"), "-q"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("kdsearch: error:") and err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- markup reaching the HTML report
def test_markup_in_names_is_escaped_in_the_html_report(tmp_path):
    """A teacher spec, a class name or a data description that holds <script> reaches report.html as text."""
    from kdsearch.pipeline import find
    from kdsearch.report import build_report

    result = find("tests.test_teacher:tiny_teacher", "0.3Mparams", data="digits", space="resnet_cifar_s1", proxy="params",
                  trials=4, top_k=1, front=0, controls=0, epochs=1, teacher_epochs=1, out=tmp_path / "run", quiet=True)
    hostile = '<script>alert("pwned")</script>'
    run = result.run_dir
    teacher = json.loads((run / "teacher.json").read_text())
    data = json.loads((run / "data.json").read_text())
    teacher["spec"], data["description"] = hostile, f"{hostile} <img src=x onerror=alert(1)>"
    data["class_names"] = [hostile] * len(data.get("class_names", [1]))
    (run / "teacher.json").write_text(json.dumps(teacher))
    (run / "data.json").write_text(json.dumps(data))
    build_report(run)
    html = (run / "report.html").read_text()
    assert hostile not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html or "\\u003cscript\\u003e" in html  # the name is still shown, as text
