"""``find``: data → teacher → space → cost → proxies → search → distill → report, in one run folder.

``run_find`` reads as the pipeline: each stage is one function of the settings and of what the stages before it
produced (``RunContext``) — the preparation and the search in ``stages``, the finalists in ``finalists`` with the top
picks by a registered ``selection`` strategy, their distillation in ``students``. Calling ``find`` again with the
same ``out`` resumes: finished trials, finalists and students are kept; an interrupted student continues from its
last epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd

from kdsearch._util import resolve_device, seed_everything, stable_hash
from kdsearch.data import load_task
from kdsearch.distill.ranking import best_first
from kdsearch.pipeline.finalists import choose_finalists
from kdsearch.pipeline.records import POOL, Finalist, RunContext
from kdsearch.pipeline.selection import create_selection
from kdsearch.pipeline.stages import (
    check_loss_students,
    check_loss_teacher,
    check_runtime,
    check_supernet_teacher,
    choose_space,
    fit_run_latency_model,
    load_run_teacher,
    resolve_budget,
    run_supernets,
    scorer,
    search_stage,
    train_supernets,
)
from kdsearch.pipeline.students import distil_finalists, student_job
from kdsearch.pipeline.worker import (
    POLL_S,
    RunQueue,
    StopFlag,
    WorkerResult,
    run_identity,
    start_local_workers,
    stop_local_workers,
    stop_point,
    storage_guard,
    work,
)
from kdsearch.report import Report, build_report
from kdsearch.run import RunFolder, RunSettings
from kdsearch.search import redact
from kdsearch.search.optuna_adapter import count_trials
from kdsearch.teacher import check_network

logger = logging.getLogger(__name__)


@dataclass
class FindResult:
    run_dir: Path
    candidates: pd.DataFrame
    teacher: dict
    budget: str
    notes: list[str] = field(default_factory=list)
    report: Report | None = None  # what `kdsearch report` would print and write; built once, at the end of the run
    val_size: int | None = None  # validation images behind each accuracy (the noise best_first ties within)

    @property
    def students(self) -> pd.DataFrame:
        """Distilled students within budget, best first (accuracies that tie within the validation noise: the faster first)."""
        df = self.candidates
        df = df[df["distilled_accuracy"].notna() & df["within_budget"]]
        return best_first(df, self.val_size)

    @property
    def best(self) -> dict | None:
        s = self.students
        return None if s.empty else s.iloc[0].to_dict()

    def load_best(self):
        from kdsearch.export import load_run_student

        return load_run_student(self.run_dir, best=True)


def find(teacher: str = "resnet101", budget: str = "10ms", **options) -> FindResult:
    """Find the best students of ``teacher`` under ``budget`` and distil the top ``top_k``.

    ``options`` are those of :meth:`kdsearch.run.RunSettings.create` (data, space, out, trials, top_k,
    proxy, sampler, device, latency_batch_size, threads, epochs, batch_size, loss, loss_options, …).
    """
    return run_find(RunSettings.create(teacher, budget, **options))


def run_find(settings: RunSettings) -> FindResult:
    """Run (or resume) the stages for validated settings; with ``settings.workers``, that many local worker
    processes take trials and students beside this one (and any ``kdsearch worker`` joined on other machines)."""
    _check_named_networks(settings)
    task = load_task(settings.data, progress=not settings.quiet)
    logger.info(f"data: {task.description}")
    settings = choose_space(settings, task)
    check_runtime(settings, task)
    check_loss_students(settings, task)
    folder = RunFolder(settings.out)
    settings = _settle_selection(settings, folder)
    folder.check_can_start(settings)
    seed_everything(settings.seed)
    teacher = load_run_teacher(settings, task)
    check_loss_teacher(settings, teacher)
    check_supernet_teacher(settings, teacher, task)
    settings, reference = resolve_budget(settings, task)
    teacher_ms = teacher.latency.p50_ms if teacher.latency else None
    if settings.budget.met_at(teacher_ms):
        logger.info(f"budget: the teacher itself meets {settings.budget.text} ({teacher_ms:.3g} ms p50); students slower "
                    "than it are allowed and flagged in the report")
    # The run folder is written only once the inputs, teacher included, are known to be good.
    resumed = folder.write_start(settings, task, teacher)
    url = folder.storage_url(settings)
    with storage_guard(url):
        queue = RunQueue(url, settings.heartbeat_s)
        queue.claim(run_identity(settings))  # a storage that holds another run's study is refused
    logger.info(f"run folder: {folder.path}{' (resuming)' if resumed else ''}; storage {redact(url)}")
    interrupt = StopFlag().install((signal.SIGINT,))  # Ctrl-C stops where nothing is lost (see StopFlag)
    procs = start_local_workers(folder.path, settings.workers, device=settings.device, storage=url) if settings.workers else []
    if procs:
        logger.info(f"workers: {len(procs)} local worker process(es) started (kdsearch worker {folder.path})")
    try:
        with storage_guard(url):
            table = _stages(RunContext(settings, task, teacher, folder, queue, built_reference=reference))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the run folder keeps everything done so far: resume with "
                                f"kdsearch find ... --out {folder.path} (the same options)") from None
    finally:
        interrupt.restore()
        codes = stop_local_workers(procs)
        if any(code not in (0, 130, -signal.SIGTERM) for code in codes):
            logger.info(f"workers: exit codes {codes} (each one's unit went back to the queue; the run is complete without them)")
    return FindResult(run_dir=folder.path, candidates=table, teacher=teacher.record(), budget=settings.budget.text,
                      notes=teacher.notes, report=build_report(folder.path), val_size=len(task.val_labels))


def _check_named_networks(settings: RunSettings) -> None:
    """Every option that names a network is checked before any work starts (data, teacher, folder)."""
    check_network(settings.teacher, "--teacher")
    if settings.budget.reference is not None:
        check_network(settings.budget.reference, f"--budget {settings.budget.text}")


def _stages(run: RunContext) -> pd.DataFrame:
    """The stages after the teacher, in order: supernets, latency model, search, finalists (the selection's top picks,
    the front's bands, the controls), distillation, the candidates' table."""
    run.queue.set_phase("preparing")
    run.ranker = train_supernets(run)
    predictor = fit_run_latency_model(run.settings, run.task, run.folder)  # fitted (or read from the cache) before any worker scores
    run.queue.set_phase("scoring")
    rows = search_stage(run, predictor)
    stop_point()  # a Ctrl-C that landed in a database call during the search
    finalists = choose_finalists(run, rows, create_selection(run.settings.selection["select"]))
    stop_point()
    distil_finalists(run, finalists)
    run.queue.set_phase("done")
    table = candidates_table(rows, finalists, run.folder, run.settings)
    run.folder.write_candidates(table)
    return table


def _settle_selection(settings: RunSettings, folder: RunFolder) -> RunSettings:
    """A resumed run keeps the target recipe and, under ``--select auto``, the selection it was started with (runs from
    before halving became the default resume as proxy runs); a new one says what auto chose and, where it fell back,
    why."""
    if folder.is_run():
        stored = folder.config()
        kept: dict = {"target_epochs": stored.get("target_epochs")}
        if kept["target_epochs"] not in (None, settings.target_epochs):
            logger.info(f"resuming: the run was started for --target-epochs {kept['target_epochs']} and keeps it")
        if settings.auto_selection is not None:
            kept["selection"] = dict(stored.get("selection") or {"select": "proxy"})
        return dataclasses.replace(settings, **kept)
    if settings.auto_selection:
        logger.info(f"select: the proxy's top-{settings.top_k}, not successive halving: {settings.auto_selection} "
                    "(--select auto)")
    elif settings.auto_selection is not None:
        logger.info("select: successive halving on short distillations from the teacher (--select auto; --select proxy "
                    "skips it)")
    return settings


def run_worker(run_dir: str | Path, *, index: int | None = None, device: str | None = None, quiet: bool = False,
               until_done: bool = True, parent: int | None = None) -> WorkerResult:
    """``kdsearch worker``: join the run in ``run_dir`` through its storage and take its units of work (scoring trials,
    students) until the run is done (``until_done``) or nothing is left to take. ``index`` picks this worker's
    sampler seed (find gives its local workers 1..N; default: from the host name and process id). ``parent``: leave
    when that process is gone (find's local workers do not outlive a find that was killed)."""
    import socket

    folder = RunFolder.open(run_dir)
    settings = folder.settings()
    if device:
        settings = dataclasses.replace(settings, device=str(resolve_device(device)))
    settings = dataclasses.replace(settings, quiet=quiet)
    index = index if index is not None else 1 + int(stable_hash([socket.gethostname(), os.getpid()], 8), 16) % 10_000
    url = folder.storage_url(settings)
    stop = StopFlag(parent).install()
    try:
        with storage_guard(url):
            queue = RunQueue(url, settings.heartbeat_s)
            queue.check(run_identity(settings))
        task = load_task(settings.data, progress=False)
        teacher = load_run_teacher(settings, task)
        stop.check()
        with storage_guard(url):
            while queue.phase == "preparing" and not stop():
                time.sleep(POLL_S)  # the supernets (if any) are trained by find before scoring opens
            ranker = run_supernets(settings, task, teacher.model) if settings.supernet is not None and not stop() else None
            before = count_trials(queue.search)
            predictor = fit_run_latency_model(settings, task, None)  # this worker's device (from the cache on find's machine)
            run = RunContext(settings, task, teacher, folder, queue, ranker)
            score = scorer(run, predictor, worker=index, wait=False, should_stop=stop)
            try:
                distilled = work(queue, score=score, distil=student_job(run),
                                 until_done=until_done, should_stop=stop)
            except KeyboardInterrupt:
                distilled = []
            scored = sum(1 for t in queue.search.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                         if t.number >= before and t.user_attrs.get("worker") == index)
    finally:
        stop.restore()
    logger.info(f"worker {index}: {'stopped; its unit went back to the queue' if stop() else 'done'} "
                f"({scored} trial(s) scored, {len(distilled)} student(s) distilled)")
    return WorkerResult(scored=scored, distilled=distilled)


LATENCY_COLUMNS = ("latency_p50_ms", "latency_p90_ms", "latency_iqr_ms", "latency_repeats", "latency_source", "reference_p50_ms")


def candidates_table(rows: dict[str, dict], finalists: dict[str, Finalist], folder: RunFolder, settings: RunSettings) -> pd.DataFrame:
    """candidates.csv: one row per scored candidate; finalists carry their re-measured latency."""
    records = []
    for cid, row in rows.items():
        final = finalists.get(cid)
        result = folder.student(cid).result() if final else None  # only finalists are distilled
        rec = {"candidate_id": cid, "trial": row["trial"], "config": json.dumps(row["config"], sort_keys=True),
               "params": row["params"], "flops": row["flops"]}
        rec.update({k: (final or row).get(k) for k in LATENCY_COLUMNS})
        rec["latency_predicted_ms"] = row.get("latency_predicted_ms")  # the model's figure, beside the measured one
        if rec.get("reference_p50_ms"):  # a relative budget: the ratio it was judged on, to the reference timed beside it
            rec["latency_ratio"] = rec["latency_p50_ms"] / rec["reference_p50_ms"]
        for name in settings.proxies:
            rec[f"proxy_{name}"] = row.get(name)
            rec[f"proxy_{name}_ms"] = row.get(f"{name}_ms")
        rec["finalist"] = final is not None
        rec["role"] = str(final.role) if final else None
        rec["band"] = final.band if final else None
        rec["rung"] = final.rung if final else None  # successive halving: the last rung it reached
        rec["stopped_at_epoch"] = final.stopped_at_epoch if final else None
        rec["teacher_source"] = (result or {}).get("teacher_source")
        rec["within_budget"] = settings.budget.fits(rec)
        rec["distilled_accuracy"] = result.get("val_accuracy") if result else None
        rec["status"] = (result or {}).get("status", "finalist" if final else "scored")
        if final and final.role == POOL and result is None:
            rec["status"] = f"cut at rung {final.rung}"
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    return table.sort_values(f"proxy_{settings.ranking_proxy}", ascending=False, ignore_index=True)
