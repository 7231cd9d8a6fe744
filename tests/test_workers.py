"""Workers that join a run through its storage: real PostgreSQL (tests/postgres.py) and SQLite, real processes,
SIGKILL / SIGTERM / Ctrl-C, the database going away, and the password kept out of files and logs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

from kdsearch.cli import main
from kdsearch.exceptions import StorageError
from kdsearch.pipeline.worker import STUDENTS_STUDY, RunQueue
from kdsearch.search import filled_slots, trial_slots
from kdsearch.search.storage import check_storage, make_storage, redact, without_password
from tests.postgres import PASSWORD

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "tests.test_teacher:tiny_teacher"


# The student queue's fault tests on the proxy's top-k (--select proxy); halving's rungs on it: test_halving.py.
def find_args(out, *extra, trials=24, top_k=2, epochs=2, space="resnet_cifar"):
    return ["find", "--teacher", TEACHER, "--budget", "0.3Mparams", "--data", "digits", "--space", space,
            "--proxy", "params", "--select", "proxy", "--trials", str(trials), "--top-k", str(top_k), "--front", "0", "--controls", "0",
            "--epochs", str(epochs), "--teacher-epochs", "10", "--train-samples", "500", "--val-samples", "300", "--batch-size", "32",
            "--heartbeat", "1", "--out", str(out), *extra]


def spawn(*argv) -> subprocess.Popen:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdsearch.cli", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    """The process's stdout and stderr once it exits; past ``timeout_s`` it is killed and the test fails with the end
    of what it printed (a hung run says where it hung)."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, proc.args[2:6]))} ... still ran after {timeout_s} s; its stderr ended with:\n{err[-3000:]}")


def studies(url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url)  # with the PostgreSQL driver that is installed
    return optuna.load_study(study_name="kdsearch", storage=storage), optuna.load_study(study_name=STUDENTS_STUDY, storage=storage)


def try_studies(url):
    try:
        return studies(url)
    except KeyError:  # find has not created them yet
        return None


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def student_held_by(students, pid: int, out) -> tuple[str, int] | None:
    """(candidate id, trial number) of a student that process ``pid`` is distilling and has checkpointed, if any."""
    for t in students.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        cid = t.user_attrs.get("candidate_id")
        if t.user_attrs.get("pid") == pid and (out / "students" / cid / "checkpoint.pt").exists():
            return cid, t.number
    return None


def test_storage_urls_keep_their_password_out_of_what_is_written():
    url = "postgresql://me:pa%40ss@db.example:5432/runs"
    assert redact(url) == "postgresql://me:***@db.example:5432/runs"
    assert without_password(url) == "postgresql://me@db.example:5432/runs"
    assert without_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db" and redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(StorageError, match="is not a database URL"):
        check_storage("redis://localhost")


def test_a_worker_never_joins_another_runs_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    RunQueue(url, 1).claim("run-a")
    RunQueue(url, 1).claim("run-a")  # the same run again: fine (resume)
    with pytest.raises(StorageError, match="already holds the study of another run"):
        RunQueue(url, 1).claim("run-b")
    with pytest.raises(StorageError, match="holds the study of another run"):
        RunQueue(url, 1).check("run-b")


def test_a_unit_whose_process_died_before_its_first_heartbeat_goes_back_to_the_queue(tmp_path, monkeypatch):
    """Optuna fails a running trial only once its heartbeat is stale, and a trial that never beat never is: a process
    killed between taking a unit and its heartbeat thread's first beat left it running for ever, and find waited for
    it (a find killed mid-rung, resumed, hung for 900 s in CI)."""
    import kdsearch.search.storage as storage_module

    monkeypatch.setattr(storage_module, "FIRST_WRITE_S", 0)  # the wait for a unit's first write: 3 beats of 1 s
    queue = RunQueue(f"sqlite:///{tmp_path / 'queue.db'}", 1)
    assert queue.enqueue([{"candidate_id": "a"}, {"candidate_id": "b"}], lambda unit: False) == 2
    orphan = queue.students.ask()  # taken; its process dies before it beats or writes anything
    started = queue.students.ask()  # taken by a live process that wrote its pid (and has not beaten yet either)
    started.set_user_attr("pid", os.getpid())
    assert queue.pending() == 2 and queue.take_student(lambda unit, trial: 1.0) is None  # too early to tell
    time.sleep(3.5)
    taken = []
    assert queue.take_student(lambda unit, trial: taken.append(unit["candidate_id"]) or 1.0) == "a" and taken == ["a"]
    states = {t.number: t.state.name for t in queue.students.get_trials(deepcopy=False)}
    assert states[orphan.number] == "FAIL" and states[started.number] == "RUNNING"
    assert sorted(states.values()) == ["COMPLETE", "FAIL", "RUNNING"] and queue.pending() == 1
    assert queue.students.get_trials(deepcopy=False)[-1].system_attrs["failed_trial"] == orphan.number


@pytest.mark.slow
def test_three_workers_on_postgres_score_every_slot_once_and_distil_each_student_once(postgres, tmp_path):
    url = postgres.new_database("three_workers")
    out = tmp_path / "run"
    n = 60  # enough for the workers to start (imports, data, the cached teacher) while find is still scoring
    proc = spawn(*find_args(out, "--storage", url, "--workers", "2", trials=n))
    _, err = finish(proc, 600)
    assert proc.returncode == 0, err[-3000:]
    search, students = studies(url)
    trials = search.get_trials(deepcopy=False)
    assert filled_slots(trials, n) == n
    slots = trial_slots(trials)
    scored = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and slots[t.number] < n]
    assert len(scored) == n  # no slot lost, none counted twice
    measured = [t.user_attrs["candidate_id"] for t in scored if not t.user_attrs.get("served")]
    assert len(set(measured)) == len(measured) >= n - 8  # no candidate measured twice; few served from a twin
    assert len({t.user_attrs["worker"] for t in scored}) >= 2  # the local workers took trials too
    jobs = [t for t in students.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["candidate_id"] for t in jobs) == sorted({t.user_attrs["candidate_id"] for t in jobs})
    df = pd.read_csv(out / "candidates.csv")
    assert df["distilled_accuracy"].notna().sum() == 2 and len(jobs) == 2
    # the password is in none of the files and in none of the log lines
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["storage"] == url.replace(f":{PASSWORD}", "")
    assert not any(PASSWORD in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".csv", ".html"))
    assert PASSWORD not in err and "storage postgresql://kdsearch:***@" in err


@pytest.mark.slow
def test_a_killed_worker_s_student_is_finished_from_its_checkpoint_by_another(postgres, tmp_path, monkeypatch):
    url = postgres.new_database("killed_worker")
    out = tmp_path / "run"
    coordinator = spawn(*find_args(out, "--storage", url, trials=12, epochs=4, space="resnet_cifar_s1", top_k=3))
    wait_for(lambda: (out / "config.yaml").exists(), 300, "the run folder")
    # the worker reads the storage's URL from config.yaml (no password): libpq takes it from PGPASSWORD
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    worker = spawn("worker", out)
    _, students = wait_for(lambda: try_studies(url), 60, "the run's studies")

    victim, _ = wait_for(lambda: student_held_by(students, worker.pid, out), 400, "the worker to checkpoint a student")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    _, err = finish(coordinator, 600)
    assert coordinator.returncode == 0, err[-3000:]
    history = [t for t in students.get_trials(deepcopy=False) if t.user_attrs.get("candidate_id") == victim]
    assert [t.state.name for t in history] == ["FAIL", "COMPLETE"]  # failed after its heartbeat stopped, retried
    assert history[1].user_attrs["pid"] == coordinator.pid
    result = json.loads((out / "students" / victim / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == list(range(1, 5))
    # the same student distilled without interruption (same teacher, data, recipe, seed and thread count)
    trial = int(pd.read_csv(out / "candidates.csv").set_index("candidate_id").loc[victim, "trial"])
    whole = spawn("distill", "--from-run", out, "--trial", trial, "--out", tmp_path / "whole", "-q")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["val_accuracy"] == pytest.approx(whole["val_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_when_the_database_goes_away_workers_stop_with_one_line_and_the_run_resumes(postgres, tmp_path):
    url = postgres.new_database("goes_away")
    out = tmp_path / "run"
    proc = spawn(*find_args(out, "--storage", url, "--workers", "1", "-q", trials=2000, top_k=1))
    search, _ = wait_for(lambda: try_studies(url), 300, "the run's studies")
    wait_for(lambda: len(search.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= 10, 300,
             "10 scored trials")
    postgres.stop("immediate")
    try:
        _, err = finish(proc, 120)
    finally:
        postgres.start()
    assert proc.returncode == 2, err[-4000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("kdsearch: error:")]
    assert errors and all("cannot be reached" in line and PASSWORD not in line for line in errors)
    # back: the same run resumes (fewer trials asked: the settings' identity does not include them)
    assert main(find_args(out, "--storage", url, "-q", trials=25, top_k=1)) == 0
    assert filled_slots(studies(url)[0].get_trials(deepcopy=False), 25) == 25
    assert pd.read_csv(out / "candidates.csv")["distilled_accuracy"].notna().sum() == 1


@pytest.mark.slow
def test_ctrl_c_and_sigterm_hand_the_unit_back_and_say_how_to_resume(tmp_path):
    out = tmp_path / "run"
    url = f"sqlite:///{out / 'study.db'}"
    proc = spawn(*find_args(out, "-q", trials=2000, top_k=1))
    search, _ = wait_for(lambda: (out / "config.yaml").exists() and try_studies(url), 300, "the run's studies")
    wait_for(lambda: len(search.get_trials(deepcopy=False)) >= 10, 300, "10 trials")
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, 60)
    assert proc.returncode == 130 and f"--out {out}" in err and "Traceback" not in err
    assert not search.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))  # handed back, not held
    # a worker stopped with SIGTERM hands its trial back the same way and exits 0
    worker = spawn("worker", out)
    before = len(search.get_trials(deepcopy=False))
    wait_for(lambda: len(search.get_trials(deepcopy=False)) >= before + 5, 300, "the worker's trials")
    worker.send_signal(signal.SIGTERM)
    _, err = finish(worker, 60)
    assert worker.returncode == 0 and "went back to the queue" in err, err
    assert not search.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    assert main(find_args(out, "-q", trials=25, top_k=1)) == 0
    assert filled_slots(search.get_trials(deepcopy=False), 25) == 25


@pytest.mark.slow
def test_sigterm_stops_a_worker_s_student_at_its_next_epoch_boundary_and_nothing_is_lost(tmp_path):
    out = tmp_path / "run"
    url = f"sqlite:///{out / 'study.db'}"
    coordinator = spawn(*find_args(out, trials=12, epochs=6, space="resnet_cifar_s1", top_k=3))
    wait_for(lambda: (out / "config.yaml").exists(), 300, "the run folder")
    worker = spawn("worker", out)
    _, students = wait_for(lambda: try_studies(url), 60, "the run's studies")

    victim, number = wait_for(lambda: student_held_by(students, worker.pid, out), 400, "the worker to checkpoint a student")
    done_before = torch.load(out / "students" / victim / "checkpoint.pt", weights_only=True)["epoch"]
    worker.send_signal(signal.SIGTERM)
    _, err = finish(worker, 300)
    assert worker.returncode == 0 and "stopping after this epoch's checkpoint" in err and "went back to the queue" in err, err
    _, err = finish(coordinator, 600)
    assert coordinator.returncode == 0, err[-3000:]
    history = sorted((t for t in students.get_trials(deepcopy=False) if t.user_attrs.get("candidate_id") == victim),
                     key=lambda t: t.number)
    assert history[0].number == number and [t.state.name for t in history] == ["FAIL", "COMPLETE"]
    stopped_at = max(history[0].intermediate_values)  # the worker's last epoch: it finished the one it was in
    assert done_before < stopped_at < 6
    # the retry resumed from that epoch's checkpoint: no epoch lost, none run twice
    assert sorted(history[1].intermediate_values) == list(range(stopped_at + 1, 7))
    result = json.loads((out / "students" / victim / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == list(range(1, 7))


def test_a_retry_keeps_its_slot_and_a_fresh_trial_fills_the_slot_it_used_a_number_of():
    """The case a restarted database left behind: trial 19 failed with its worker and was retried as trial 20
    (slot 19); the fresh trials after it take slots 20, 21, ...; the search needs trial 40 to fill slot 39."""
    from kdsearch.search import has_open_slot

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    done = optuna.trial.TrialState.COMPLETE
    for number in range(40):
        if number == 19:
            study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL))
        elif number == 20:
            study.add_trial(optuna.create_trial(state=done, value=0.0, system_attrs={"failed_trial": 19, "retry_history": [19]}))
        else:
            study.add_trial(optuna.create_trial(state=done, value=0.0))
    trials = study.get_trials()
    slots = trial_slots(trials)
    assert slots[19] == slots[20] == 19 and slots[21] == 20 and slots[39] == 38
    assert filled_slots(trials, 40) == 39 and has_open_slot(study, 40)
    study.add_trial(optuna.create_trial(state=done, value=0.0))
    assert filled_slots(study.get_trials(), 40) == 40 and not has_open_slot(study, 40)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_find_with_a_local_worker_on_cuda(tmp_path):
    """find and one local worker share the GPU: trials measured with CUDA events, students distilled there."""
    out = tmp_path / "run"
    proc = spawn(*find_args(out, "--workers", "1", "--device", "cuda", trials=60))
    _, err = finish(proc, 500)
    assert proc.returncode == 0, err[-3000:]
    search, students = studies(f"sqlite:///{out / 'study.db'}")
    assert filled_slots(search.get_trials(deepcopy=False), 60) == 60
    jobs = [t for t in students.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(jobs) == 2 and yaml.safe_load((out / "config.yaml").read_text())["device"].startswith("cuda")
    df = pd.read_csv(out / "candidates.csv")
    assert (df[df["distilled_accuracy"].notna()]["distilled_accuracy"] > 0.3).all()


def _pop_jobs(url, count, out):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="queue", storage=make_storage(url))
    taken = []
    for _ in range(count):
        trial = study.ask()
        taken.append(trial.user_attrs.get("job"))
        study.tell(trial, 0.0)
    Path(out).write_text(json.dumps(taken))


def test_sqlite_hands_each_waiting_trial_to_one_process(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE: without BEGIN IMMEDIATE two workers took the same waiting trial (the
    scale-out benchmark died with 'Cannot tell a COMPLETE trial')."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=make_storage(url))
    for job in range(120):
        study.enqueue_trial({}, user_attrs={"job": job})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_pop_jobs, args=(url, 40, tmp_path / f"w{i}.json")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    taken = [job for i in range(3) for job in json.loads((tmp_path / f"w{i}.json").read_text())]
    assert sorted(taken) == list(range(120))  # every job once, none twice


def test_a_heartbeat_that_meets_a_lost_database_logs_instead_of_raising_and_patches_nothing(tmp_path, caplog):
    """Optuna beats from its own thread; a database gone mid-trial must not print that thread's traceback. The quiet
    beat lives in our storage class, not in a process-wide threading.excepthook."""
    import threading

    import optuna

    from kdsearch.search.storage import is_storage_failure

    hook = threading.excepthook
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_s=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    backend = storage._backend if hasattr(storage, "_backend") else storage  # Optuna wraps an RDBStorage in a cache
    backend.record_heartbeat(trial._trial_id)  # a working database: recorded
    backend.engine.dispose()
    (tmp_path / "study.db").unlink()
    (tmp_path / "study.db").mkdir()  # the file is gone and cannot be recreated: every statement fails
    with caplog.at_level("DEBUG", logger="kdsearch.search.storage"):
        backend.record_heartbeat(trial._trial_id)  # no exception: logged
    assert f"heartbeat of trial {trial._trial_id} not recorded" in caplog.text
    with pytest.raises(Exception) as failure:
        study.ask()  # the main thread meets the failure at its next storage call
    assert is_storage_failure(failure.value)
    assert threading.excepthook is hook
