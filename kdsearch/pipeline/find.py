"""``find``: data → teacher → space → cost → proxies → search → distill → report, in one run folder.

Each stage is one short function of the settings and what the stages before it produced. Calling
``find`` again with the same ``out`` resumes: finished trials, finalists and students are kept; an
interrupted student continues from its last epoch.
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

import numpy as np
import pandas as pd
import torch

from kdsearch._util import resolve_device, seed_everything, stable_hash
from kdsearch.cost import (
    LatencyModel,
    LatencyTimer,
    MeasureSettings,
    fit_latency_model,
    measure_against_reference,
    measure_latency,
    use_latency_model,
)
from kdsearch.data import Task, load_task
from kdsearch.distill import create_loss
from kdsearch.distill.ranking import best_first
from kdsearch.exceptions import BudgetError, RunFolderError, RuntimeUnavailable, TrainingDiverged
from kdsearch.pipeline.halving import drain, finish_epochs, halving_recipe, run_halving, rung_unit_score
from kdsearch.pipeline.student import distill_student
from kdsearch.pipeline.worker import (
    POLL_S,
    RunQueue,
    StopFlag,
    WorkerResult,
    epoch_boundaries,
    run_identity,
    start_local_workers,
    stop_local_workers,
    stop_point,
    stop_requested,
    storage_guard,
    work,
)
from kdsearch.proxies import ProxyContext, ensemble_components
from kdsearch.proxies.ensemble import REFERENCE_SIZE
from kdsearch.report import Report, build_report
from kdsearch.run import STUDY_NAME, RunFolder, RunSettings
from kdsearch.search import (
    CandidateEvaluator,
    exact_proxy,
    latency_columns,
    measure_candidate,
    redact,
    reference_models,
    run_search,
    scored_candidates,
)
from kdsearch.search.optuna_adapter import count_trials
from kdsearch.spaces import SearchSpace, create_model, default_space_path, load_space
from kdsearch.supernet import SandwichRule, SupernetRanker, prepare_supernets
from kdsearch.teacher import Teacher, check_network, load_network, load_teacher
from kdsearch.teacher.teacher import teacher_summary
from kdsearch.training import validation_logits

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
    settings = _choose_space(settings, task)
    _check_runtime(settings, task)
    folder = RunFolder(settings.out)
    settings = _settle_selection(settings, folder)
    folder.check_can_start(settings)
    seed_everything(settings.seed)
    teacher = _load_teacher(settings, task)
    settings = _resolve_budget(settings, task)
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
            table = _stages(settings, task, teacher, folder, queue)
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


def _stages(settings: RunSettings, task: Task, teacher: Teacher, folder: RunFolder, queue: RunQueue) -> pd.DataFrame:
    queue.set_phase("preparing")
    ranker = _supernets(settings, task, teacher, folder)
    predictor = _latency_model(settings, task, folder)  # fitted (or read from the cache) before any worker scores
    queue.set_phase("scoring")
    rows = _search(settings, task, teacher, folder, ranker, predictor)
    stop_point()  # a Ctrl-C that landed in a database call during the search
    finalists = _choose_finalists(settings, task, rows, folder, queue, teacher, ranker)
    stop_point()
    _distil_finalists(settings, task, teacher, finalists, folder, ranker, queue)
    queue.set_phase("done")
    table = candidates_table(rows, finalists, folder, settings)
    folder.write_candidates(table)
    return table


def _choose_space(settings: RunSettings, task: Task) -> RunSettings:
    if settings.space is not None:
        logger.info(f"space: {settings.space.name} ({settings.space.size:,} candidates)")
        return settings
    space = load_space(default_space_path(task.input_shape[1]))
    logger.info(f"space: {space.name} (default for {task.input_shape[1]}x{task.input_shape[2]} inputs; --space to change)")
    return settings.with_space(space)


def _check_runtime(settings: RunSettings, task: Task) -> None:
    """A runtime that cannot run the space's networks is refused before the teacher (one RuntimeUnavailable line)."""
    if settings.runtime == "torch":
        return
    config = settings.space.sample(1, seed=settings.seed)[0]
    model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)
    try:
        LatencyTimer(model, task.input_shape, torch.device(settings.device), settings.latency_batch_size, settings.threads,
                     settings.runtime)  # prepares (compiles, exports) and runs it once
    except RuntimeUnavailable as exc:
        raise RuntimeUnavailable(f"--runtime {settings.runtime} cannot run the candidates of {settings.space.name} "
                                 f"(family {settings.space.family}): {exc}") from None


def _load_teacher(settings: RunSettings, task: Task) -> Teacher:
    started = time.perf_counter()
    teacher = load_teacher(
        settings.teacher, task, weights=settings.teacher_weights, device=torch.device(settings.device),
        pretrained=settings.pretrained, epochs=settings.teacher_epochs, latency_kwargs=settings.latency("final"),
        progress=not settings.quiet,
    )
    logger.info(f"teacher: {teacher_summary(teacher)} [{time.perf_counter() - started:.0f} s]")
    return teacher


def _resolve_budget(settings: RunSettings, task: Task) -> RunSettings:
    """A relative budget ('0.8x:<network>'): the reference network timed in the run's runtime, the limit set from it
    for the search; each finalist is then timed in alternation with the reference and compared with that figure."""
    budget = settings.budget
    if budget.factor is None:
        return settings
    reference = load_network(budget.reference, task)
    stats = measure_latency(reference, task.input_shape, device=settings.device, **settings.latency("final"))
    settings = settings.with_reference_latency(stats.p50_ms)
    logger.info(f"budget: {budget.factor:g} x {budget.reference} = {budget.factor:g} x {stats.p50_ms:.3g} ms = "
                f"{settings.budget.limit:.3g} ms (each finalist is timed against the reference again)")
    return settings


def run_supernets(settings: RunSettings, task: Task, teacher: torch.nn.Module, *, progress: bool = False) -> SupernetRanker:
    """The run's supernets as its settings define them (bands, budget, recipe, latency settings, seed): trained, or
    read from the cache when a run with the same settings trained them (as for a warm start after the run)."""
    return prepare_supernets(
        settings.space, task, teacher, bands=settings.supernet["subspaces"], limit_ms=settings.budget.latency_limit_ms,
        recipe=settings.supernet_recipe(), rule=SandwichRule.with_anchors(settings.supernet.get("anchors", "latency")),
        device=torch.device(settings.device), latency=settings.latency("search"), seed=settings.seed, progress=progress,
    )


def _supernets(settings: RunSettings, task: Task, teacher: Teacher, folder: RunFolder) -> SupernetRanker | None:
    """With a supernet proxy: the latency bands and a supernet per band that holds candidates within the budget,
    distilled from the teacher (or reused from the cache), recorded in the run folder."""
    if settings.supernet is None:
        return None
    started = time.perf_counter()
    ranker = run_supernets(settings, task, teacher.model, progress=not settings.quiet)
    folder.write_supernets({**ranker.record(), "recipe": settings.supernet_recipe().to_dict()}, ranker.histories,
                           ranker.weights_files())
    logger.info(f"supernet: {len(ranker.supernets)} of {ranker.bands.count} band(s) ready [{time.perf_counter() - started:.0f} s]")
    return ranker


def _latency_model(settings: RunSettings, task: Task, folder: RunFolder | None) -> LatencyModel | None:
    """With a latency model (--latency-model, or auto for a large space): fitted on this device from a measured
    sample, or from the cache of an earlier run on it; its record written to the run folder."""
    space = settings.space
    if not use_latency_model(settings.latency_model, space, settings.runtime, settings.budget.metric):
        return None
    measure = MeasureSettings(input_shape=task.input_shape, num_classes=task.num_classes, in_chans=task.in_chans,
                              device=settings.device, runtime=settings.runtime, threads=settings.threads,
                              batch_size=settings.latency_batch_size)
    model = fit_latency_model(space, measure, seed=settings.seed)
    best = model.validation[model.chosen]
    logger.info(f"latency model: {model.chosen} (of {', '.join(model.validation)}), held-out MAPE {best['mape']:.1%}, "
                f"Kendall tau {best['kendall_tau']:.2f}, {best['within_10pct']:.0%} within ±10 % [{model.seconds:.0f} s]")
    if folder is not None:
        folder.write_latency_model(model.record())
    return model


def _proxy_context(settings: RunSettings, task: Task, teacher: Teacher, space: SearchSpace,
                   ranker: SupernetRanker | None = None) -> ProxyContext:
    device = torch.device(settings.device)
    images, labels = task.sample_batch(64, seed=settings.seed)
    ctx = ProxyContext(
        teacher=teacher, images=images.to(device), labels=labels.to(device), num_classes=task.num_classes,
        input_shape=task.input_shape, reference_models=lambda: reference_models(space, task, device, REFERENCE_SIZE, settings.seed),
        supernet=ranker,
    )
    components = ensemble_components(list(settings.proxies))
    if components:
        started = time.perf_counter()
        for component in components:
            ctx.reference_scores(component)
        logger.info(f"proxies: reference population of {REFERENCE_SIZE} candidates scored for {', '.join(components)} "
                    f"[{time.perf_counter() - started:.0f} s]")
    return ctx


def _scorer(settings: RunSettings, task: Task, teacher: Teacher, folder: RunFolder, ranker: SupernetRanker | None,
            predictor: LatencyModel | None,
            *, worker: int = 0, wait: bool = True, should_stop=None):
    """``score()``: take trials of the run's study (this process as worker ``worker``) until its slots are filled."""
    space, budget = settings.space, settings.budget
    ctx = _proxy_context(settings, task, teacher, space, ranker)
    evaluate = CandidateEvaluator(task, ctx, list(settings.proxies), torch.device(settings.device), settings.latency("search"),
                                  seed=settings.seed, budget=budget, recheck=settings.latency("final"), predictor=predictor)
    cheap = exact_proxy(settings.ranking_proxy, task, ctx, settings.device, settings.seed)

    def score():
        return run_search(
            space, evaluate, budget=budget, objective=settings.ranking_proxy, storage=folder.storage_url(settings),
            study_name=STUDY_NAME, n_trials=settings.trials, timeout=settings.timeout, seed=settings.seed,
            sampler=settings.sampler, progress=not settings.quiet and worker == 0, cheap_score=cheap, top_k=settings.top_k,
            metric_model=predictor.predict if predictor is not None and budget.latency_limit_ms is not None else None,
            worker=worker, wait=wait, heartbeat_s=settings.heartbeat_s,
            should_stop=should_stop or stop_requested,
        )

    return score


def _search(settings: RunSettings, task: Task, teacher: Teacher, folder: RunFolder,
            ranker: SupernetRanker | None = None, predictor: LatencyModel | None = None) -> dict[str, dict]:
    """Score candidates in the study until its ``trials`` slots are filled; the scored candidates by id."""
    space, budget = settings.space, settings.budget
    started = time.perf_counter()
    study = _scorer(settings, task, teacher, folder, ranker, predictor)()
    rows = scored_candidates(study)
    if not rows:
        raise RunFolderError(f"No candidate of {space.name} could be scored; see the errors above and check the space.")
    feasible = sum(budget.fits(r) for r in rows.values())
    logger.info(f"search: {len(rows)} distinct candidates scored, {feasible} within {budget.text} [{time.perf_counter() - started:.0f} s]")
    if not feasible:
        smallest = min(rows.values(), key=lambda r: r[budget.metric])
        raise BudgetError(
            f"No candidate of {space.name} fits the budget {budget.text}: the smallest found is "
            f"{budget.describe(smallest[budget.metric])} on {settings.device}; raise --budget (with a new --out) or choose a smaller --space."
        )
    return rows


def band_edges(rows: dict[str, dict], settings: RunSettings) -> list[float]:
    """``front + 1`` edges, evenly spaced on a log scale, from the fastest scored candidate to the budget (by the
    budget's metric: latency, FLOPs or parameters)."""
    metric, limit = settings.budget.metric, settings.budget.limit
    low = min(float(r[metric]) for r in rows.values())
    if settings.front < 1 or low >= limit:
        return []
    return [low * (limit / low) ** (i / settings.front) for i in range(settings.front + 1)]


def band_of(value: float, edges: list[float]) -> int | None:
    """1 = the fastest band, len(edges) - 1 = the one just under the budget; None outside them."""
    for i in range(1, len(edges)):
        if value <= edges[i] * (1 + 1e-9):
            return i if value >= edges[i - 1] * (1 - 1e-9) else None
    return None


def band_covered(finalists: dict[str, dict], band: int, edges: list[float], metric: str) -> bool:
    """Does a fitting finalist already stand for ``band``? Its own band pick, or a top pick or control that lies in
    it — not another band's pick that re-measured into it (it keeps its band; counting it here too left the demo's
    front without its fastest band), nor a pool member that successive halving cut."""
    for f in finalists.values():
        role = f.get("role", "top")
        if f["within_budget"] and (role == f"band {band}" or (role in ("top", "control") and band_of(f[metric], edges) == band)):
            return True
    return False


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


def _choose_finalists(settings: RunSettings, task: Task, rows: dict[str, dict], folder: RunFolder,
                      queue: RunQueue | None = None, teacher: Teacher | None = None,
                      ranker: SupernetRanker | None = None) -> dict[str, dict]:
    """The students to distil, each re-measured with the finalists' latency settings and kept only if it still fits:
    the ``top_k`` best by the ranking proxy (with ``--select halving``: the survivors of successive halving over the
    proxy's top ``pool``), the best of each latency band of the front, and ``controls`` drawn at random among those
    that fit (seeded). Each finalist records its ``role``; resumes from finalists.json."""
    budget, proxy = settings.budget, settings.ranking_proxy
    finalists = folder.finalists()
    feasible = sorted((r for r in rows.values() if budget.fits(r)), key=lambda r: r[proxy], reverse=True)
    chooser = _Chooser(settings, task, finalists, folder)
    if settings.selection["select"] == "halving":
        _select_by_halving(settings, task, feasible, chooser, folder, queue, teacher, ranker)
    else:
        chooser.take("top", feasible, settings.top_k)
    edges = band_edges(rows, settings)
    for band in range(len(edges) - 1, 0, -1):  # from the budget down to the fastest
        if not band_covered(finalists, band, edges, budget.metric):
            chooser.take(f"band {band}", [r for r in feasible if band_of(r[budget.metric], edges) == band], 1)
    if settings.controls:
        order = np.random.default_rng(settings.seed).permutation(len(feasible))
        chooser.take("control", [feasible[i] for i in order], settings.controls)
    for final in finalists.values():  # a band's pick stays in the band it was chosen for (by its search reading)
        role = final.get("role", "top")
        value = final[budget.metric]
        if final["within_budget"] and edges:  # a relative budget judges it beside the reference: it may lie above the
            value = min(value, edges[-1])     # limit the bands were cut at when the run started, and still fit
        final["band"] = int(role.split()[1]) if role.startswith("band ") else band_of(value, edges)
    folder.write_finalists(finalists)
    return finalists


def _select_by_halving(settings: RunSettings, task: Task, feasible: list[dict], chooser: _Chooser, folder: RunFolder,
                       queue: RunQueue, teacher: Teacher, ranker: SupernetRanker | None) -> None:
    """The pool (the proxy's top ``pool`` that still fit when re-measured) distilled in rungs; the survivors become
    the run's top picks (role 'top'), the others stay 'pool' with the rung that cut them."""
    finalists, proxy = chooser.finalists, settings.ranking_proxy
    state = folder.halving()
    if state is None:
        chooser.take("pool", feasible, settings.selection["pool"])
        pool = [cid for cid, f in finalists.items() if f.get("role") == "pool" and f["within_budget"]]
        pool.sort(key=lambda c: (-finalists[c][proxy], c))
    else:  # resumed: the pool the stage started with (its survivors may already be 'top')
        pool = state["pool"]
    sel = settings.selection
    logger.info(f"halving: pool of {len(pool)} (the top by {proxy} within the budget), eta {sel['eta']}, first rung "
                f"{sel['first_rung']} epoch(s), design {sel['rung_design']}, signal {sel['rung_signal']}, survivors to epoch "
                f"{finish_epochs(settings)}")
    queue.set_phase("distilling")
    distil = student_job(settings, task, teacher, folder, ranker)
    state = run_halving(settings, task, folder, queue, distil, pool, {c: float(finalists[c][proxy]) for c in pool})
    reached = {cid: (r["index"], r["until_epoch"]) for r in state["rungs"] for cid in r["members"]}
    for cid in pool:
        final = finalists[cid]
        final["rung"], final["stopped_at_epoch"] = reached[cid]
        if final.get("role") in ("pool", "top"):  # a cut member promoted to a band or control keeps that role (resume)
            final["role"] = "top" if cid in state["survivors"] else "pool"
    folder.write_finalists(finalists)


class _Chooser:
    """Re-measures candidates for one role until it holds ``count`` that fit (skipping any already chosen)."""

    def __init__(self, settings: RunSettings, task: Task, finalists: dict, folder: RunFolder):
        self.settings, self.task, self.finalists, self.folder = settings, task, finalists, folder
        budget = settings.budget
        self.reference = load_network(budget.reference, task) if budget.factor is not None else None

    def measure(self, model: torch.nn.Module) -> dict:
        """A finalist's latency columns (with a relative budget, the reference's latency timed in alternation)."""
        device, latency = torch.device(self.settings.device), self.settings.latency("final")
        if self.reference is None:
            return measure_candidate(model, self.task, device, latency)
        # three rounds of a third of the finalists' time each, so that the pair costs what one finalist did before
        settings = {**latency, "max_time_s": latency["max_time_s"] / 3}
        ours, reference = measure_against_reference(model, self.reference, self.task.input_shape, device=device, **settings)
        return {**latency_columns(ours), "reference_p50_ms": reference.p50_ms}

    def take(self, role: str, ordered: list[dict], count: int) -> None:
        budget = self.settings.budget
        accepted = sum(1 for f in self.finalists.values() if f.get("role", "top") == role and f["within_budget"])
        for row in ordered:
            if accepted >= count:
                return
            cid = row["candidate_id"]
            if cid in self.finalists:
                final = self.finalists[cid]
                if role != "pool" and final.get("role") == "pool" and final["within_budget"]:
                    # cut by successive halving: it still stands for its band (or as a control), distilled on to the
                    # end from its rung checkpoint (else a pool covering the budget left no front and no control)
                    final["role"] = role
                    accepted += 1
                    self.folder.write_finalists(self.finalists)
                continue
            model = create_model(row["config"], num_classes=self.task.num_classes, in_chans=self.task.in_chans)
            final = {**row, **self.measure(model)}
            final["within_budget"], final["role"] = budget.fits(final), role
            self.finalists[cid] = final
            if final["within_budget"]:
                accepted += 1
            else:
                logger.info(f"finalist {cid} ({role}): {budget.describe(final[budget.metric])} on re-measurement exceeds "
                         f"{budget.text}; taking the next one")
            self.folder.write_finalists(self.finalists)


def _distil_finalists(settings: RunSettings, task: Task, teacher: Teacher, finalists: dict, folder: RunFolder,
                      ranker: SupernetRanker | None, queue: RunQueue) -> None:
    """Queue the accepted finalists in the storage and distil them here and on every worker that takes one; wait
    until none is left waiting or being distilled. Halving's survivors are done already; its cut pool is not distilled."""
    accepted = [cid for cid, f in finalists.items() if f["within_budget"] and f.get("role") != "pool"]
    roles = ", ".join(finalists[c].get("role", "top") for c in accepted)
    if not create_loss(settings.loss_name, **settings.loss_options).logits_only:
        logger.info(f"students: {len(accepted)} ({roles}); the loss {settings.loss_name!r} needs the teacher's features, so each "
                    "student runs the live teacher")
    else:
        logger.info(f"students: {len(accepted)} ({roles}); the teacher's logits are computed once and shared by all of them")
    queue.enqueue([{"candidate_id": cid} for cid in accepted], lambda unit: folder.student(unit["candidate_id"]).result() is not None)
    queue.set_phase("distilling")
    drain(queue, student_job(settings, task, teacher, folder, ranker), settings)


def _epoch_reporter(trial):
    """After each epoch's checkpoint: the validation accuracy to the unit's trial (Optuna's intermediate values), then
    the stop point — a SIGTERM or Ctrl-C during the epoch hands the unit back here, nothing lost."""
    def on_epoch(h: dict) -> None:
        if trial is not None:
            trial.report(float(h["val_accuracy"]), int(h["epoch"]))
        stop_point()

    return on_epoch


def student_job(settings: RunSettings, task: Task, teacher: Teacher, folder: RunFolder,
                ranker: SupernetRanker | None):
    """``distil(unit, trial) -> accuracy``: one finalist distilled into its student folder (resumed from its
    checkpoint when another worker started it), to the full recipe, or to the end of its rung of successive halving
    (a unit with ``rung``), reporting its validation accuracy to the trial after each epoch."""
    warm = ranker is not None and settings.supernet.get("warm_start")
    val_logits: list = []  # the teacher's validation logits, computed once per process (rungs record val_kd_loss)

    def distil(unit: dict, trial=None) -> float:
        cid, rung = unit["candidate_id"], unit.get("rung")
        finalists = folder.finalists()
        final, student = finalists[cid], folder.student(cid)
        if rung is not None and (record := student.rung(rung)) is not None:
            return rung_unit_score(record)
        done = student.result()
        if done is not None and rung is None:
            return float(done.get("val_accuracy") or 0.0)
        started, role = time.perf_counter(), final.get("role", "top")
        options: dict = {}
        recipe = settings.recipe()
        if rung is not None or final.get("rung") is not None:  # a rung unit, or a cut pool member distilled on: the
            # rungs' schedule (halving.json precedes any rung unit); a cut member goes on to --epochs, like the bands
            survivor = rung is not None or final.get("role") == "top"
            recipe = halving_recipe(settings, folder.halving(), epochs=None if survivor else settings.epochs)
        if rung is not None:
            if not val_logits:
                val_logits.append(validation_logits(teacher.model, task, device=torch.device(settings.device)))
            options["val_teacher_logits"] = val_logits[0]
            options["until_epoch"] = int(unit["until_epoch"])
            role = f"rung {rung}"
        options["on_epoch"] = _epoch_reporter(trial)
        try:  # ``done``: a last rung whose result was written before its rung record (a kill between the two)
            with epoch_boundaries():
                result = done or distill_student(
                    final["config"], teacher.model, task, student, recipe, loss=settings.loss_name,
                    loss_options=settings.loss_options, device=torch.device(settings.device), progress=not settings.quiet,
                    desc=f"distilling {cid} ({role})",
                    extra={"candidate_id": cid, "role": final.get("role", "top"), "band": final.get("band"), "warm_start": bool(warm)},
                    initial=ranker.subnet(final["config"], final["latency_p50_ms"]) if warm else None, **options,
                )
        except TrainingDiverged as exc:
            logger.info(f"student {cid}: {exc} — marked failed")
            record = {"candidate_id": cid, "status": "diverged", "error": str(exc)}
            if rung is not None:
                student.write_rung(rung, {**record, "history": []})
            else:
                student.write_result(record)
            return 0.0
        if rung is not None:
            record = {"candidate_id": cid, "rung": rung, "until_epoch": int(unit["until_epoch"]), "status": result["status"],
                      "history": result["history"], "seconds": result.get("seconds")}
            student.write_rung(rung, record)
            logger.info(f"student {cid} ({role}): val acc {result['val_accuracy']:.4f} at epoch {unit['until_epoch']} "
                        f"[{time.perf_counter() - started:.0f} s]")
            return rung_unit_score(record)
        logger.info(f"student {cid} ({role}): val acc {result['val_accuracy']:.4f} at {final['latency_p50_ms']:.3f} ms "
                    f"[{time.perf_counter() - started:.0f} s]")
        return float(result["val_accuracy"])

    return distil


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
        teacher = _load_teacher(settings, task)
        stop.check()
        with storage_guard(url):
            while queue.phase == "preparing" and not stop():
                time.sleep(POLL_S)  # the supernets (if any) are trained by find before scoring opens
            ranker = run_supernets(settings, task, teacher.model) if settings.supernet is not None and not stop() else None
            before = count_trials(queue.search)
            predictor = _latency_model(settings, task, None)  # this worker's device (from the cache on find's machine)
            score = _scorer(settings, task, teacher, folder, ranker, predictor, worker=index, wait=False, should_stop=stop)
            try:
                distilled = work(queue, score=score, distil=student_job(settings, task, teacher, folder, ranker),
                                 until_done=until_done, should_stop=stop)
            except KeyboardInterrupt:
                distilled = []
            scored = sum(1 for t in queue.search.get_trials(deepcopy=False) if t.number >= before and
                         t.user_attrs.get("worker") == index)
    finally:
        stop.restore()
    logger.info(f"worker {index}: {'stopped; its unit went back to the queue' if stop() else 'done'} "
                f"({scored} trial(s) scored, {len(distilled)} student(s) distilled)")
    return WorkerResult(scored=scored, distilled=distilled)


LATENCY_COLUMNS = ("latency_p50_ms", "latency_p90_ms", "latency_iqr_ms", "latency_repeats", "latency_source", "reference_p50_ms")


def candidates_table(rows: dict[str, dict], finalists: dict[str, dict], folder: RunFolder, settings: RunSettings) -> pd.DataFrame:
    """candidates.csv: one row per scored candidate; finalists carry their re-measured latency."""
    records = []
    for cid, row in rows.items():
        final = finalists.get(cid)
        result = folder.student(cid).result() if final else None  # only finalists are distilled
        rec = {"candidate_id": cid, "trial": row["trial"], "config": json.dumps(row["config"], sort_keys=True),
               "params": row["params"], "flops": row["flops"]}
        rec.update({k: (final or row).get(k) for k in LATENCY_COLUMNS})
        rec["latency_predicted_ms"] = row.get("latency_predicted_ms")  # the model's figure, beside the measured one
        for name in settings.proxies:
            rec[f"proxy_{name}"] = row.get(name)
            rec[f"proxy_{name}_ms"] = row.get(f"{name}_ms")
        rec["finalist"] = final is not None
        rec["role"] = final.get("role", "top") if final else None
        rec["band"] = final.get("band") if final else None
        rec["rung"] = final.get("rung") if final else None  # successive halving: the last rung it reached
        rec["stopped_at_epoch"] = final.get("stopped_at_epoch") if final else None
        rec["teacher_source"] = (result or {}).get("teacher_source")
        rec["within_budget"] = settings.budget.fits(rec)
        rec["distilled_accuracy"] = result.get("val_accuracy") if result else None
        rec["status"] = (result or {}).get("status", "finalist" if final else "scored")
        if final and final.get("role") == "pool" and result is None:
            rec["status"] = f"cut at rung {final.get('rung')}"
        records.append(rec)
    table = pd.DataFrame.from_records(records)
    return table.sort_values(f"proxy_{settings.ranking_proxy}", ascending=False, ignore_index=True)
