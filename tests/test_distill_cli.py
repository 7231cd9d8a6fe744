"""`kdsearch distill`: one student from the CLI, SIGKILL mid-run and resume, DDP with gloo on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdsearch.cli import main

TEACHER = "tests.test_teacher:tiny_teacher"
STUDENT = json.dumps({"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 16})
REPO = Path(__file__).resolve().parents[1]


def distill_args(out, *extra, epochs=4):
    return [
        "distill", "--teacher", TEACHER, "--teacher-epochs", "5", "--student", STUDENT, "--data", "digits",
        "--epochs", str(epochs), "--lr", "0.1", "--out", str(out), "-q", *extra,
    ]


def test_distill_cli_writes_a_loadable_student(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(distill_args(out, "--loss", "dkd", "--loss-opt", "warmup=1")) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["loss"]["name"] == "dkd" and result["loss"]["beta"] == 8.0 and result["loss"]["warmup"] == 1
    assert result["val_accuracy"] > 0.3
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,loss,val_accuracy,img_per_s") and len(metrics) == 5
    import kdsearch

    model = kdsearch.load_student(out)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert not (out / "checkpoint.pt").exists()
    # a second run into the same folder must be explicit
    code = main(distill_args(out))
    assert code == 2 and "pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "kdd"], "Unknown loss 'kdd'"),
        (["--loss-opt", "temperature"], "is not KEY=VALUE"),
        (["--loss-opt", "temp=2"], "has no setting 'temp'"),
        (["--loss-opt", "temperature=abc"], "setting temperature needs a float"),  # was a ValueError traceback
    ],
)
def test_distill_cli_bad_input(tmp_path, capsys, extra, message):
    code = main(distill_args(tmp_path / "x", *extra))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_diverging_training_is_one_line_and_exit_2(tmp_path, capsys):
    # was a TrainingDiverged (RuntimeError) traceback
    code = main(distill_args(tmp_path / "d", "--lr", "1e30", epochs=1))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Training diverged" in lines[0] and "--lr" in lines[0] and "Traceback" not in err


def test_distill_a_timm_student_by_name_and_bad_names(tmp_path, capsys):
    code = main(["distill", "--teacher", TEACHER, "--student", "resnet1O", "--out", str(tmp_path / "t"), "-q"])
    assert code == 2 and "Unknown student 'resnet1O'" in capsys.readouterr().err
    code = main(["distill", "--teacher", TEACHER, "--student", "{bad json", "--out", str(tmp_path / "t"), "-q"])
    assert code == 2 and "not valid JSON" in capsys.readouterr().err


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "kdsearch.cli", *args], env


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_loses_at_most_one_epoch(tmp_path):
    """Kill -9 while epoch 3 of 5 runs; --resume continues from epoch 2 and ends where an unbroken run ends."""
    epochs = 5
    straight = tmp_path / "straight"
    cmd, env = _cli(*distill_args(straight, epochs=epochs))
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    reference = json.loads((straight / "result.json").read_text())

    out = tmp_path / "killed"
    cmd, env = _cli(*distill_args(out, epochs=epochs))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    checkpoint = out / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            try:
                if torch.load(checkpoint, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:  # being replaced at this instant; the rename is atomic, try again
                pass
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 3
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(checkpoint, weights_only=True)["epoch"]
    assert saved >= 2 and not (out / "result.json").exists()

    cmd, env = _cli(*distill_args(out, "--resume", epochs=epochs))
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    resumed = json.loads((out / "result.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, epochs + 1))
    # deterministic on CPU: the resumed run reaches the unbroken run's accuracy (within noise)
    assert abs(resumed["val_accuracy"] - reference["val_accuracy"]) <= 0.02


@pytest.mark.slow
def test_ddp_with_gloo_on_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd, env = _cli(*distill_args(out, "--batch-size", "32", epochs=5))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "kdsearch.cli", *cmd[3:]]
    subprocess.run(cmd, env=env, check=True, cwd=REPO, timeout=600)
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2  # and fit() checked that both replicas ended identical
    assert result["val_accuracy"] > 0.2  # chance is 0.1; the global batch is 2 × 32
    # two ranks of 32 each consumed the whole training set once per epoch
    assert len(result["history"]) == 5
