"""End to end through the CLI on real data (digits, CIFAR-10 JPEGs): find → report → export, resume, bad input."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from kdsearch.cli import main
from kdsearch.pipeline.finalists import band_covered, band_of
from kdsearch.pipeline.records import Finalist, Role

TEACHER = "tests.test_teacher:tiny_teacher"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# The shared run uses a parameter budget: which candidates fit is then exact on any machine. A latency
# budget on this shared CPU let 1 of 9 candidates fit in one CI run and 3 in another (timings vary 2×);
# the ms path is covered by test_cifar10_jpeg_folder_end_to_end and the budget error cases below. These runs check
# the proxy's top-k (--select proxy); halving, the default, has its own runs in test_halving.py.
def find_args(out, *extra, budget="0.3Mparams", data="digits"):
    return [
        "find", "--teacher", TEACHER, "--budget", budget, "--data", data, "--space", "resnet_cifar_s1",
        "--trials", 10, "--top-k", 2, "--front", 2, "--controls", 1, "--epochs", 8, "--teacher-epochs", 10, "--select", "proxy",
        "--train-samples", 600, "--val-samples", 300, "--batch-size", 32, "--out", out, "-q", *extra,
    ]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    code = main([str(a) for a in find_args(out)])
    assert code == 0
    return out


def test_find_writes_a_complete_run_folder(digits_run):
    for name in ("config.yaml", "study.db", "candidates.csv", "teacher.json", "data.json", "report.html", "sample_batch.safetensors"):
        assert (digits_run / name).exists(), name
    df = pd.read_csv(digits_run / "candidates.csv")
    assert 7 <= len(df) <= 10 and df["candidate_id"].is_unique  # TPE may propose a config twice
    from kdsearch.proxies.ensemble import DEFAULT_PROXY

    ranking = yaml.safe_load((digits_run / "config.yaml").read_text())["proxies"][0]
    assert ranking == DEFAULT_PROXY  # --proxy default: the ensemble chosen on ground truth
    assert {"params", "flops", "latency_p50_ms", "latency_p90_ms", f"proxy_{ranking}", f"proxy_{ranking}_ms"} <= set(df.columns)
    students = df[df["distilled_accuracy"].notna()]
    assert (students["distilled_accuracy"] > 0.3).all()  # 10 classes: chance is 0.1
    assert (students["params"] <= 300_000).all() and (df["within_budget"] == (df["params"] <= 300_000)).all()
    assert (~df["within_budget"]).sum() >= 1  # the budget really excludes some of the sampled candidates
    # the proxy's picks are the best-ranked candidates within budget
    within = df[df["within_budget"]].sort_values(f"proxy_{ranking}", ascending=False)
    top = students[students["role"] == "top"]
    assert set(top["candidate_id"]) == set(within["candidate_id"].head(2))
    # one control, drawn among the others that fit
    controls = students[students["role"] == "control"]
    assert len(controls) == 1 and not set(controls["candidate_id"]) & set(top["candidate_id"])
    # each band student is the best-ranked of its band that no other role had taken
    edges = [df["params"].min() * (300_000 / df["params"].min()) ** (i / 2) for i in range(3)]  # --front 2, by params
    bands = within["params"].map(lambda v: band_of(v, edges))
    for _, row in students[students["role"].str.startswith("band")].iterrows():
        band = int(row["role"].split()[1])
        assert row["band"] == band == band_of(row["params"], edges)
        rivals = within[(bands == band) & within["distilled_accuracy"].isna()]
        assert (rivals[f"proxy_{ranking}"] <= row[f"proxy_{ranking}"]).all()
    assert students["teacher_source"].str.startswith("shared outputs").all()  # kd: the teacher ran once for all
    html = (digits_run / "report.html").read_text()
    assert "Pareto front" in html and "plotly" in html and "<script src=\"http" not in html  # works offline


def test_find_batch_size_is_the_training_batch_and_latency_has_its_own(digits_run):
    # --batch-size used to be the latency batch in find and the training batch in distill
    config = yaml.safe_load((digits_run / "config.yaml").read_text())
    assert config["batch_size"] == 32 and config["latency_batch_size"] == 1 and config["recipe"]["batch_size"] == 32
    for result in (digits_run / "students").glob("*/result.json"):
        assert json.loads(result.read_text())["recipe"]["batch_size"] == 32


@pytest.mark.parametrize("command", ["find", "distill"])
def test_help_lists_every_registered_choice(command, capsys):
    from kdsearch.data import LOADERS
    from kdsearch.distill import list_losses
    from kdsearch.proxies import list_proxies
    from kdsearch.search import sampler_names

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in list_losses() + LOADERS.names() + (list_proxies() + sampler_names() if command == "find" else []):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name  # 'nd' was missing from the loss list
    assert ("--latency-batch-size" in text) == (command == "find")


def test_report_prints_the_pareto_table(digits_run, capsys):
    code, out, _ = run_cli(capsys, "report", digits_run)
    assert code == 0
    assert "budget: 0.3Mparams" in out and "teacher:" in out and "Pareto front" in out
    assert re.search(r"picks vs controls: [\d.]+ % \(n=\d\) vs [\d.]+ % \(n=1\): [+-][\d.]+ ± [\d.]+ points — ", out)
    assert "Kendall τ of params vs distilled accuracy" in out
    assert "too few students to mean anything" in out  # 3-5 students: the report says so
    # the recipe the choice was made for: the default target, 2.5 x --epochs 8
    assert "chosen by the proxy's top-2 for a student to be distilled for 20 epochs (--target-epochs); find distilled each for 8" in out
    assert not re.search(r"\d{6,}\.0000", out)  # counts printed as counts (2.52 M), not floats
    df = pd.read_csv(digits_run / "candidates.csv")
    best = df.sort_values("distilled_accuracy", ascending=False).iloc[0]
    assert best["candidate_id"] in out


def test_report_renders_in_headless_chromium(digits_run, tmp_path):
    """The report as a user opens it: plots drawn (non-blank), no console errors, axes fitted to the data."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    from PIL import Image

    url = (digits_run / "report.html").resolve().as_uri()
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2600",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="main-svg"') >= 3  # plotly drew every figure (it adds these SVGs only when it runs)
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
    assert not console_errors, console_errors
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    gray = Image.open(shot).convert("L")
    pixels = gray.tobytes()  # one byte per pixel ("L")
    assert sum(p < 200 for p in pixels) > 0.01 * len(pixels)  # not a blank page
    assert len(set(gray.crop((0, 400, 1280, 1000)).tobytes())) > 20  # the first plot has content, not one colour


def test_front_plot_axes_fit_the_students_teacher_and_budget(digits_run):
    import math

    from kdsearch.report import build_report
    from kdsearch.report.figures import _front_figure

    report = build_report(digits_run)
    fig = _front_figure(report)
    low, high = fig.layout.xaxis.range
    xs = list(report.table["latency_p50_ms"]) + [report.teacher["latency"]["p50_ms"]]
    assert low <= min(math.log10(x) for x in xs) and high >= max(math.log10(x) for x in xs)
    assert high - low < 1.5 + math.log10(max(xs) / min(xs))  # fitted, not 10 ms to 10^10 ms


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_export_formats_are_verified(digits_run, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    code, out, err = run_cli(capsys, "export", digits_run, "--best", "--format", fmt, "--out", tmp_path / fmt)
    assert code == 0, err
    assert "max abs diff" in out
    diff = float(out.rsplit("max abs diff", 1)[1].strip().strip(":").strip())
    assert diff < 1e-3
    if fmt == "safetensors":
        import kdsearch

        model = kdsearch.load_student(tmp_path / fmt)
        meta = model.kdsearch_meta
        from safetensors.torch import load_file

        batch = load_file(str(digits_run / "sample_batch.safetensors"))
        with torch.no_grad():
            preds = model(batch["images"]).argmax(1)
        assert meta["num_classes"] == 10 and preds.shape == (8,)


def test_export_a_trial_that_was_not_distilled(digits_run, capsys):
    df = pd.read_csv(digits_run / "candidates.csv")
    trial = int(df[df["distilled_accuracy"].isna()].iloc[0]["trial"])
    code, _, err = run_cli(capsys, "export", digits_run, "--trial", trial)
    assert code == 2 and "was not distilled" in err and "Traceback" not in err


def test_rerun_resumes_without_redoing_work(digits_run, capsys, tmp_path):
    import os
    import shutil

    digits_run = Path(shutil.copytree(digits_run, tmp_path / "digits"))  # the shared run stays as the other tests expect it
    sources = {json.loads(p.read_text())["teacher_source"] for p in (digits_run / "students").glob("*/result.json")}
    assert len(sources) == 1  # every student of the run read the same shared outputs
    outputs = Path(os.environ["KDSEARCH_CACHE_DIR"]) / "teacher_outputs" / sources.pop().split()[-1]
    cached = {p: p.stat().st_mtime_ns for p in outputs.rglob("*.npy")}
    assert len(cached) == 8  # the run's 8 epochs of teacher logits, computed once for all its students
    before = {p: p.stat().st_mtime_ns for p in (digits_run / "students").glob("*/model.safetensors")}
    code, out, _ = run_cli(capsys, *find_args(digits_run, "--trials", 12))
    assert code == 0
    after = {p: p.stat().st_mtime_ns for p in (digits_run / "students").glob("*/model.safetensors")}
    assert all(after[p] == t for p, t in before.items())  # finished students are kept, not retrained
    assert {p: p.stat().st_mtime_ns for p in outputs.rglob("*.npy")} == cached  # new students read the same cache
    import optuna

    study = optuna.load_study(study_name="kdsearch", storage=f"sqlite:///{digits_run / 'study.db'}")
    assert len(study.trials) == 12  # the study continued from 10 to 12 trials


def test_out_holding_a_different_study_is_refused(digits_run, capsys):
    code, _, err = run_cli(capsys, *find_args(digits_run, budget="4ms"))  # same run folder, another budget
    assert code == 2
    assert "holds a different study" in err and "budget" in err and "Traceback" not in err


def test_python_api_matches_cli(digits_run):
    import kdsearch

    report = kdsearch.build_report(digits_run)
    assert not report.table.empty and report.table["pareto"].any()
    model, meta = kdsearch.load_run_student(digits_run)
    # one rule for "the best student": the report's first row is what export and FindResult.best take
    assert meta["candidate_id"] == report.table.iloc[0]["candidate_id"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "fast"], "Could not read the budget 'fast'"),
        (["--proxy", "diswat"], "Unknown proxy 'diswat'"),
        (["--loss", "dkdd"], "Unknown loss 'dkdd'"),
        (["--data", "/no/such/dir"], "does not exist"),
        (["--teacher", "resnet1011"], "--teacher: unknown network 'resnet1011'"),
        (["--teacher", "no_such_module:net"], "--teacher 'no_such_module:net'"),
        (["--budget", "0.8x:no_such_net"], "--budget 0.8x:no_such_net: unknown network 'no_such_net'"),
        (["--budget", "0.8x:/no/such/net.pt"], "--budget 0.8x:/no/such/net.pt: the file '/no/such/net.pt' does not exist"),
        (["--space", "resnet_cifr"], "Search space 'resnet_cifr' not found"),
        (["--proxy", "params+synflaw"], "Unknown proxy 'synflaw' in ensemble"),
        (["--budget", "1us"], "fits the budget 1us: the smallest found is"),
        (["--teacher-weights", "CORRUPT"], "Could not read checkpoint"),
        (["--controls", "-1"], "--controls: expected a number of at least 0, got -1"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys, argv, message):
    base = {"--teacher": TEACHER, "--budget": "50ms", "--data": "digits", "--space": "resnet_cifar_s1", "--proxy": "diswot", "--device": "cpu", "--loss": "kd"}
    if "--teacher-weights" in argv:
        bad = tmp_path / "weights.pt"
        bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
        argv = ["--teacher-weights", bad]
    for key, value in zip(argv[::2], argv[1::2]):
        base[key] = value
    out = tmp_path / "run"
    args = ["find", *[x for kv in base.items() for x in kv], "--trials", 3, "--top-k", 1, "--epochs", 1, "--teacher-epochs", 1, "--out", out, "-q"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert message in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdsearch: error:") and "Traceback" not in err
    # input errors leave nothing behind; only the budget error, found after scoring, leaves a resumable study
    if "budget 1us" in message:
        assert (out / "study.db").exists() and not (out / "report.html").exists()
    else:
        assert not out.exists()


def test_invalid_yaml_space(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("family: resnet_cifar\nchoices:\n  depth1: [1, 3\n")
    code, _, err = run_cli(capsys, "find", "--teacher", TEACHER, "--budget", "10ms", "--space", bad, "--out", tmp_path / "r", "-q")
    assert code == 2 and "space.yaml: line" in err and "not valid YAML" in err


def test_report_and_export_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert code == 2 and "not a kdsearch run folder" in err
    code, _, err = run_cli(capsys, "export", tmp_path, "--best")
    assert code == 2 and "not a kdsearch run folder" in err


def test_export_from_a_run_with_no_trained_student(digits_run, tmp_path, capsys):
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(digits_run, clone)
    df = pd.read_csv(clone / "candidates.csv")
    df["distilled_accuracy"] = None
    df.to_csv(clone / "candidates.csv", index=False)
    code, _, err = run_cli(capsys, "export", clone, "--best", "--format", "onnx")
    assert code == 2 and "has no distilled student" in err
    assert not (clone / "export").exists()


@pytest.mark.slow
def test_cifar10_jpeg_folder_end_to_end(cifar_folder, tmp_path, capsys):
    """The issue's CIFAR-10 path on the real JPEGs: resnet_cifar space, a ms budget, Pareto report.

    (README shows the 2 ms run; here the budget leaves room for a busy CI machine, where every latency
    can double.)"""
    out = tmp_path / "c10"
    code, stdout, err = run_cli(
        capsys, "find", "--teacher", TEACHER, "--data", cifar_folder, "--space", "resnet_cifar", "--budget", "5ms",
        "--trials", 12, "--top-k", 2, "--epochs", 2, "--teacher-epochs", 2, "--select", "proxy", "--out", out, "-q",
    )
    assert code == 0, err
    df = pd.read_csv(out / "candidates.csv")
    students = df[df["distilled_accuracy"].notna()]
    # how many fit depends on this machine's load at the time; the contract is "top 2 of those that fit", plus the
    # best of each latency band below them (default --front 4) and one random control
    top = students[students["role"] == "top"]
    assert 1 <= len(top) == min(2, int(df["within_budget"].sum()))
    assert len(students) <= 2 + 4 + 1 and set(students["role"].str.split().str[0]) <= {"top", "band", "control"}
    assert (students["latency_p50_ms"] <= 5.0).all() and students["within_budget"].all()
    assert json.loads((out / "data.json").read_text())["input_shape"] == [3, 32, 32]
    assert "Pareto front" in stdout
    assert Path(out / "report.html").stat().st_size > 100_000  # plotly.js is embedded for offline viewing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_find_on_cuda_end_to_end(tmp_path, capsys):
    """The whole pipeline on the GPU: latency with CUDA events, proxies, teacher and students trained there."""
    out = tmp_path / "cuda"
    code, _, err = run_cli(capsys, *find_args(out, "--device", "cuda"))
    assert code == 0, err
    df = pd.read_csv(out / "candidates.csv")
    students = df[df["distilled_accuracy"].notna()]
    assert (students["role"] == "top").sum() == 2 and (students["params"] <= 300_000).all()
    assert (students["distilled_accuracy"] > 0.3).all()  # 10 classes: chance is 0.1
    assert (df["latency_p50_ms"] > 0).all() and (df["latency_p50_ms"] < 50).all()
    assert yaml.safe_load((out / "config.yaml").read_text())["device"].startswith("cuda")


def test_distill_a_trial_from_a_run_uses_its_teacher_and_data(digits_run, tmp_path, capsys):
    df = pd.read_csv(digits_run / "candidates.csv")
    row = df.iloc[-1]
    out = tmp_path / "from-run"
    code, stdout, err = run_cli(capsys, "distill", "--from-run", digits_run, "--trial", int(row["trial"]), "--epochs", 1, "--out", out, "-q")
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["config"] == json.loads(row["config"])
    assert result["teacher"]["spec"] == TEACHER and result["data"]["name"] == "digits"
    # the run's whole settings, not only its data name: sample counts, the teacher's preparation, the recipe
    assert result["data"]["val_size"] == 300 and result["data"]["spec"] == yaml.safe_load((digits_run / "config.yaml").read_text())["data"]
    assert any("reused from cache" in note for note in result["teacher"]["notes"])  # the run's prepared teacher
    assert result["recipe"]["batch_size"] == 32 and result["recipe"]["epochs"] == 1 and result["loss"]["name"] == "kd"
    code, _, err = run_cli(capsys, "distill", "--from-run", digits_run, "--out", tmp_path / "x", "-q")
    assert code == 2 and "--from-run needs --trial N" in err


def test_a_band_pick_that_re_measures_into_a_faster_band_does_not_cover_it():
    """make demo once lost its fastest band: band 2's pick re-measured at 2.13 ms, inside band 1, and band 1 counted
    as covered. A band pick stands for its own band only; top picks and controls cover the band they lie in."""
    from kdsearch.cost import parse_budget

    edges, budget = [1.33, 2.21, 3.67, 6.09, 10.0], parse_budget("10ms")

    def final(role, fits, ms, **metrics):
        return {"x": Finalist("x", {}, Role.parse(role), fits, {"latency_p50_ms": ms, **metrics})}

    moved = final("band 2", True, 2.13)
    assert band_covered(moved, 2, edges, budget) and not band_covered(moved, 1, edges, budget)
    top = final("top", True, 1.9)
    assert band_covered(top, 1, edges, budget) and not band_covered(top, 2, edges, budget)
    assert not band_covered(final("control", False, 1.9), 1, edges, budget)
    # a relative budget places a finalist by its ratio to the reference timed beside it: 2.6 ms beside a reference
    # that read 13 ms (the run started when it read 10 ms) lies where 2.0 ms did at the start: band 1
    relative = parse_budget("1.0x:resnet18").with_reference(10.0)
    slow = final("top", True, 2.6, reference_p50_ms=13.0)
    assert band_covered(slow, 1, edges, relative) and not band_covered(slow, 2, edges, relative)


def test_find_in_onnxruntime_with_a_latency_model_and_a_budget_relative_to_a_shipped_network(tmp_path, capsys, monkeypatch):
    """--runtime onnxruntime, --latency-model on and --budget 0.9x:<candidate JSON> together, on digits."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("kdsearch.cost.latency_model.SAMPLE_SIZE", 32)  # the test's time, not the model's accuracy
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3}))
    out = tmp_path / "rel"
    code, stdout, err = run_cli(
        capsys, "find", "--teacher", TEACHER, "--budget", f"0.9x:{shipped}", "--data", "digits", "--space",
        "resnet_cifar_s1", "--runtime", "onnxruntime", "--latency-model", "on", "--trials", 12, "--top-k", 1, "--front", 1,
        "--controls", 0, "--epochs", 1, "--teacher-epochs", 2, "--val-samples", 200, "--out", out,
    )
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["runtime"] == "onnxruntime" and config["budget_reference_ms"] > 0
    model = json.loads((out / "latency_model.json").read_text())
    assert model["chosen"] in ("lut", "regressor") and model["key"]["runtime"] == "onnxruntime"
    table = pd.read_csv(out / "candidates.csv")
    screened = table[~table["finalist"]]
    assert (screened["latency_source"] == "model").any() and screened["latency_predicted_ms"].notna().all()
    finalists = table[table["finalist"]]
    assert (finalists["latency_source"] == "measured").all() and finalists["reference_p50_ms"].notna().all()
    # a finalist is within budget exactly when it ran under 0.9 x the reference timed beside it
    for _, row in finalists.iterrows():
        assert bool(row["within_budget"]) == (row["latency_p50_ms"] <= 0.9 * row["reference_p50_ms"])
    # the figure the decision used, beside the milliseconds; the report's front is drawn on it, the budget at 0.9
    ratio = finalists["latency_p50_ms"] / finalists["reference_p50_ms"]
    assert (finalists["latency_ratio"] - ratio).abs().max() < 1e-9
    html = (out / "report.html").read_text()
    assert "timed beside it" in html and "latency_ratio" in html
    assert "latency model:" in stdout and "predicted vs measured" in stdout and "measured in onnxruntime" in stdout
    code, stdout, _ = run_cli(capsys, "export", out)  # the runtime's format by default
    assert code == 0 and "as onnx" in stdout and (out / "export" / "student.onnx").exists()


def test_find_refuses_a_runtime_that_cannot_run_the_space(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from kdsearch.spaces import register_family

    class _Spectral(torch.nn.Module):
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.fc = torch.nn.Linear(in_chans, num_classes)

        def forward(self, x):
            return self.fc(torch.fft.fft2(x).abs().mean(dim=(2, 3)))

    def spectral_test(size: int = 1, *, num_classes: int = 10, in_chans: int = 3):
        return _Spectral(num_classes, in_chans)

    from kdsearch.spaces.families import FAMILIES

    register_family(spectral_test)
    space = tmp_path / "spectral.yaml"
    space.write_text("family: spectral_test\nchoices:\n  size: [1, 2]\n")
    try:
        code, _, err = run_cli(capsys, "find", "--teacher", TEACHER, "--budget", "10ms", "--space", space,
                               "--runtime", "onnxruntime", "--out", tmp_path / "never", "-q")
    finally:
        FAMILIES._items.pop("spectral_test")
    assert code == 2 and "--runtime onnxruntime cannot run the candidates of spectral" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()  # refused before the run folder was written
