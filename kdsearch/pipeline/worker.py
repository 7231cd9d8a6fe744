"""Workers: processes on one machine or many that take a run's units of work from its Optuna storage.

A run's storage holds two studies. ``kdsearch`` is the search: one trial per scored candidate, in slots
``0 .. trials - 1`` (``kdsearch.search.filled_slots``). ``kdsearch-students`` is the queue of students to distil:
find enqueues one waiting trial per finalist, and a worker takes one by popping it (Optuna's RDB storage hands a
waiting trial to exactly one process). Every unit runs under Optuna's heartbeat: when a worker dies, its unit is
failed after the grace period and a copy goes back to the queue; the next worker resumes a student from its last
epoch checkpoint. SIGTERM or Ctrl-C hands the current unit back (a student at its next epoch boundary) and leaves.

The search study's user attributes say what the run is (``identity``: a worker never joins another run's study)
and what it is doing (``phase``: preparing, scoring, distilling, done); a worker polls them.

Supported layouts: one machine (``find --workers N``; SQLite in the run folder), or several machines that share the
run folder (NFS or any shared filesystem; an object store is not supported) and reach one PostgreSQL or MySQL
server (``find --storage postgresql://...``, then ``kdsearch worker RUN`` on each machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from kdsearch._util import stable_hash
from kdsearch.exceptions import StorageError
from kdsearch.run import STUDY_NAME, RunSettings
from kdsearch.search import fail_stale_trials, open_study, redact, requeue
from kdsearch.search.optuna_adapter import count_trials
from kdsearch.search.storage import is_storage_failure, unreachable

STUDENTS_STUDY = "kdsearch-students"
PHASES = ("preparing", "scoring", "distilling", "done")
POLL_S = 1.0
STARTED = "pid"  # a unit's first write: the process that holds it (a unit without it long after it began lost its process)


def run_identity(settings: RunSettings) -> str:
    """What a storage's study must belong to: the hash of the run's identity (teacher, data, space, budget, ...)."""
    return stable_hash(settings.identity(), length=16)


class RunQueue:
    """The run's two studies in its storage: identity, phase and the students' queue."""

    def __init__(self, url: str, heartbeat_s: int):
        self.url = url
        self.search = open_study(url, STUDY_NAME, heartbeat_s=heartbeat_s)
        self.students = open_study(url, STUDENTS_STUDY, heartbeat_s=heartbeat_s)

    # ------------------------------------------------------------------ identity and phase
    def claim(self, identity: str) -> None:
        """find: the storage's study becomes this run's, or already is; another run's study is refused."""
        found = self.search.user_attrs.get("identity")
        if found is None:
            self.search.set_user_attr("identity", identity)
        elif found != identity:
            raise StorageError(f"The storage {redact(self.url)} already holds the study of another run; give this run "
                               "its own database (or a new --storage URL), or resume that run with its own --out.")

    def check(self, identity: str) -> None:
        """worker: join only the study of this run."""
        found = self.search.user_attrs.get("identity")
        if found != identity:
            what = "no kdsearch run yet" if found is None else "the study of another run"
            raise StorageError(f"The storage {redact(self.url)} holds {what}; start the run with 'kdsearch find' on this "
                               "run folder first, and give each worker that run's folder.")

    @property
    def phase(self) -> str:
        return self.search.user_attrs.get("phase", "preparing")

    def set_phase(self, phase: str) -> None:
        assert phase in PHASES
        self.search.set_user_attr("phase", phase)

    # ------------------------------------------------------------------ students
    def _jobs(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.students.get_trials(deepcopy=False, states=states) if "candidate_id" in t.user_attrs]

    def enqueue(self, units: list[dict], done: Callable[[dict], bool]) -> int:
        """Queue the units not yet done and not already queued or being distilled; how many were queued. A unit is
        ``{"candidate_id": ...}`` (a student to the full recipe) or, for a rung of successive halving, with ``rung``
        and ``until_epoch``."""
        active = {unit_key(t.user_attrs) for t in self._jobs((optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING))}
        queued = 0
        for unit in units:
            if unit_key(unit) not in active and not done(unit):
                self.students.enqueue_trial({}, user_attrs=dict(unit))
                queued += 1
        return queued

    def pending(self) -> int:
        """Students waiting or being distilled (a job whose worker died is failed and queued again first)."""
        fail_stale_trials(self.students, started=STARTED)
        return len(self._jobs((optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)))

    def take_student(self, distil: Callable[[dict, optuna.Trial], float]) -> str | None:
        """Pop one waiting unit and run ``distil(unit, trial)`` (it may ``trial.report`` each epoch); the candidate
        id, or None when none was waiting."""
        fail_stale_trials(self.students, started=STARTED)
        if not count_trials(self.students, optuna.trial.TrialState.WAITING):
            return None
        taken: list[str] = []

        def job(trial: optuna.Trial) -> float:
            cid = trial.user_attrs.get("candidate_id")
            if cid is None:  # another worker popped the last waiting job first: this trial was created empty
                trial.set_user_attr("empty", True)
                raise optuna.TrialPruned()
            trial.set_user_attr(STARTED, os.getpid())  # who holds it (for the person reading the storage, and tests)
            trial.set_user_attr("host", socket.gethostname())
            try:
                value = distil(dict(trial.user_attrs), trial)
            except Exception as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
                raise
            except BaseException:  # Ctrl-C, SIGTERM: another worker resumes it from its last checkpoint
                requeue(self.students, trial)
                raise
            taken.append(cid)
            return value

        self.students.optimize(job, n_trials=1, gc_after_trial=False)
        return taken[0] if taken else None


def unit_key(unit: dict) -> tuple[str, int | None]:
    """A unit of the students' queue: a candidate, and the rung for a rung of successive halving."""
    return unit["candidate_id"], unit.get("rung")


@dataclass
class WorkerResult:
    scored: int  # trials this worker added to the search study
    distilled: list[str]  # candidate ids of the students it distilled


def work(queue: RunQueue, *, score: Callable[[], None] | None, distil: Callable[[dict, optuna.Trial], float],
         until_done: bool, should_stop: Callable[[], bool]) -> list[str]:
    """The worker loop: score while the search has free slots, distil while students wait; with ``until_done``
    leave once the run's phase is done, else once nothing is left to take."""
    distilled: list[str] = []
    while not should_stop():
        phase = queue.phase
        if phase == "scoring" and score is not None:
            score()
        cid = queue.take_student(distil)
        if cid is not None:
            distilled.append(cid)
            continue
        if phase == "done" or (not until_done and phase == "distilling" and not queue.pending()):
            break
        time.sleep(POLL_S)
    return distilled


@contextlib.contextmanager
def storage_guard(url: str):
    """Turn a lost database connection into one StorageError line (the run resumes when it is back)."""
    try:
        yield
    except Exception as exc:
        if is_storage_failure(exc):
            raise unreachable(url, exc) from None
        raise


# ---------------------------------------------------------------------- local workers (find --workers N)
def start_local_workers(run_dir: Path, count: int, *, device: str | None = None, storage: str | None = None) -> list[subprocess.Popen]:
    """``count`` ``kdsearch worker`` processes on this machine, each with its index (their samplers differ). The run
    folder keeps no password: a password given in ``storage`` reaches them as PGPASSWORD, as libpq reads it."""
    from urllib.parse import unquote, urlsplit

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    password = urlsplit(storage).password if storage and "://" in storage else None
    if password:
        env["PGPASSWORD"] = unquote(password)
    procs = []
    for index in range(1, count + 1):
        cmd = [sys.executable, "-m", "kdsearch.cli", "worker", str(run_dir), "--index", str(index), "--parent",
               str(os.getpid()), "-q"]
        if device:
            cmd += ["--device", device]
        procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
    return procs


def stop_local_workers(procs: list[subprocess.Popen], timeout_s: float = 60.0) -> list[int]:
    """SIGTERM (each hands its unit back), then wait; exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def _in_storage(frame) -> bool:
    """Is the main thread inside a database call? A KeyboardInterrupt raised there can leave SQLite's write lock
    held by a connection the traceback still references, and the next write then waits out the busy timeout."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(("sqlalchemy", "optuna.storages", "sqlite3", "psycopg")):
            return True
        frame = frame.f_back
    return False


class StopFlag:
    """SIGTERM and Ctrl-C → stop, at a point where nothing is lost.

    While a student is being distilled (``epoch_boundaries()``) the signal only sets the flag; the student stops at its
    next epoch boundary, after that epoch's checkpoint (``stop_point()`` there), and its unit goes back to the queue.
    Elsewhere it interrupts at once, unless the main thread is inside a database call: a KeyboardInterrupt raised there
    can leave SQLite's write lock held by a connection the traceback still references. There it only sets the flag,
    which every loop that calls the database polls. A second Ctrl-C interrupts at once, wherever it lands."""

    active: StopFlag | None = None  # the installed one: signal handlers are per process, so is the flag

    def __init__(self, parent: int | None = None):
        self.stopped, self.parent, self.signal_name, self._deferring, self._previous = False, parent, "", 0, {}

    def install(self, signals=(signal.SIGTERM, signal.SIGINT)) -> StopFlag:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread (the API called from another: default handling)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handler)
        StopFlag.active = self
        return self

    def restore(self) -> None:
        """The handlers there were before ``install`` (find called from Python leaves the caller's handlers as they were)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if StopFlag.active is self:
            StopFlag.active = None

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.stopped and signum == signal.SIGINT:  # pressed again: the person wants out now
            raise KeyboardInterrupt("")
        if self.stopped:
            return
        self.stopped, self.signal_name = True, name
        if self._deferring:
            os.write(2, f"kdsearch: {name}: stopping after this epoch's checkpoint (Ctrl-C again: stop now)\n".encode())
            return
        if not _in_storage(frame):
            raise KeyboardInterrupt(name if name != "SIGINT" else "")

    @contextlib.contextmanager
    def epoch_boundaries(self):
        """Within: a signal waits for ``stop_point()`` (called after each epoch's checkpoint)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def check(self) -> None:
        """Raise the interrupt a signal asked for (at a point where stopping loses nothing)."""
        if self():
            raise KeyboardInterrupt(self.signal_name if self.signal_name != "SIGINT" else "")

    def __call__(self) -> bool:
        if self.parent is not None and os.getppid() != self.parent:
            self.stopped = True  # the find that started this worker is gone
        return self.stopped


def stop_requested() -> bool:
    """Has SIGTERM or Ctrl-C asked this process to stop (the installed StopFlag), without raising?"""
    return StopFlag.active is not None and StopFlag.active()


def stop_point() -> None:
    """Where work may stop without loss (an epoch's checkpoint is written): raise if SIGTERM or Ctrl-C asked for it."""
    if StopFlag.active is not None:
        StopFlag.active.check()


@contextlib.contextmanager
def epoch_boundaries():
    """A student's distillation: SIGTERM or Ctrl-C stop it at its next ``stop_point()``, not mid-epoch."""
    if StopFlag.active is None:
        yield
        return
    with StopFlag.active.epoch_boundaries():
        yield


__all__ = ["PHASES", "STUDENTS_STUDY", "RunQueue", "StopFlag", "WorkerResult", "run_identity", "start_local_workers",
           "stop_local_workers", "stop_point", "stop_requested", "epoch_boundaries", "storage_guard", "unit_key", "work"]
