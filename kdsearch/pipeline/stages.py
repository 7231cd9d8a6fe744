"""The stages of ``find`` before the finalists: the space, the runtime check, the teacher, a relative budget's
reference, the supernets, the latency model and the search (scoring candidates into the run's study). ``kdsearch worker``
runs the same stages to join a run."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from kdsearch.cost import LatencyModel, LatencyTimer, MeasureSettings, fit_latency_model, measure_latency, use_latency_model
from kdsearch.data import Task
from kdsearch.distill import create_loss
from kdsearch.exceptions import BudgetError, LossError, RunFolderError, RuntimeUnavailable
from kdsearch.pipeline.records import RunContext
from kdsearch.pipeline.worker import stop_requested
from kdsearch.proxies import ProxyContext, ensemble_components
from kdsearch.proxies.ensemble import REFERENCE_SIZE
from kdsearch.run import STUDY_NAME, RunFolder, RunSettings
from kdsearch.search import CandidateEvaluator, exact_proxy, reference_models, run_search, scored_candidates
from kdsearch.spaces import SearchSpace, create_model, default_space_path, load_space
from kdsearch.supernet import SandwichRule, SupernetRanker, prepare_supernets, resolve_rule
from kdsearch.taps import attention_blocks
from kdsearch.teacher import Teacher, load_network, load_teacher
from kdsearch.teacher.teacher import teacher_summary

logger = logging.getLogger(__name__)


def choose_space(settings: RunSettings, task: Task) -> RunSettings:
    if settings.space is not None:
        logger.info(f"space: {settings.space.name} ({settings.space.size:,} candidates)")
        return settings.with_space(settings.space.for_input(task.input_shape[1]))
    space = load_space(default_space_path(task.input_shape[1])).for_input(task.input_shape[1])
    logger.info(f"space: {space.name} (default for {task.input_shape[1]}x{task.input_shape[2]} inputs; --space to change)")
    return settings.with_space(space)


def check_runtime(settings: RunSettings, task: Task) -> None:
    """A runtime that cannot run the space's networks is refused before the teacher (one RuntimeUnavailable line)."""
    if settings.runtime == "torch":
        return
    for space in getattr(settings.space, "parts", (settings.space,)):  # each space of a union
        model = create_model(space.sample(1, seed=settings.seed)[0], num_classes=task.num_classes, in_chans=task.in_chans)
        try:
            LatencyTimer(model, task.input_shape, torch.device(settings.device), settings.latency_batch_size,
                         settings.threads, settings.runtime)  # prepares (compiles, exports) and runs it once
        except RuntimeUnavailable as exc:
            raise RuntimeUnavailable(f"--runtime {settings.runtime} cannot run the candidates of {space.name} "
                                     f"(family {space.family}): {exc}") from None


def _attention_loss(settings: RunSettings) -> bool:
    return getattr(create_loss(settings.loss_name, **settings.loss_options), "teacher_attention_layer", None) is not None


def check_loss_students(settings: RunSettings, task: Task) -> None:
    """A loss that reads attention (minilm) needs transformer students: refused before the teacher is loaded."""
    if not _attention_loss(settings):
        return
    for space in getattr(settings.space, "parts", (settings.space,)):  # each space of a union
        config = space.sample(1, seed=settings.seed)[0]
        if attention_blocks(create_model(config, num_classes=task.num_classes, in_chans=task.in_chans)) is None:
            raise LossError(f"--loss {settings.loss_name} distils self-attention, but the students of space "
                            f"{space.name} (family {space.family}) are not transformers; search a vit "
                            "space (--space vit_cifar) or use --loss kd.")


def check_loss_teacher(settings: RunSettings, teacher: Teacher) -> None:
    """... and a transformer teacher: refused once it is loaded, before the run folder is written."""
    if _attention_loss(settings) and attention_blocks(teacher.model) is None:
        raise LossError(f"--loss {settings.loss_name} distils self-attention, but the teacher "
                        f"({type(teacher.model).__name__}) is not a transformer with readable attention; use --loss kd "
                        "(or --loss deit_hard, DeiT's hard-label distillation) for a CNN teacher.")


def supernet_rule(settings: RunSettings) -> SandwichRule:
    """The run's sandwich rule: its anchors and objective (``--supernet-anchors``, ``--supernet-objective``)."""
    rule = SandwichRule.with_anchors(settings.supernet.get("anchors", "latency"))
    return replace(rule, objective=settings.supernet.get("objective", "auto"))


def check_supernet_teacher(settings: RunSettings, teacher: Teacher, task: Task) -> None:
    """A relational supernet objective needs a transformer teacher and students: refused once the teacher is loaded,
    before the run folder is written."""
    if settings.supernet is None or settings.supernet.get("objective", "auto") in ("auto", "kd"):
        return
    try:
        resolve_rule(supernet_rule(settings), settings.space, task, teacher.model, settings.seed)
    except ValueError as exc:
        raise LossError(f"--supernet-objective: {exc}") from None


def load_run_teacher(settings: RunSettings, task: Task) -> Teacher:
    started = time.perf_counter()
    teacher = load_teacher(
        settings.teacher, task, weights=settings.teacher_weights, device=torch.device(settings.device),
        pretrained=settings.pretrained, epochs=settings.teacher_epochs, latency_kwargs=settings.latency("final"),
        progress=not settings.quiet,
    )
    logger.info(f"teacher: {teacher_summary(teacher)} [{time.perf_counter() - started:.0f} s]")
    return teacher


def resolve_budget(settings: RunSettings, task: Task) -> tuple[RunSettings, torch.nn.Module | None]:
    """A relative budget ('0.8x:<network>'): the reference network timed in the run's runtime, the limit set from it
    for the search; each finalist is then timed in alternation with the reference and compared with that figure.
    Returns the settings and the reference network (None for an absolute budget), which the run keeps."""
    budget = settings.budget
    if budget.factor is None:
        return settings, None
    reference = load_network(budget.reference, task)
    stats = measure_latency(reference, task.input_shape, device=settings.device, **settings.latency("final"))
    settings = settings.with_reference_latency(stats.p50_ms)
    logger.info(f"budget: {budget.factor:g} x {budget.reference} = {budget.factor:g} x {stats.p50_ms:.3g} ms = "
                f"{settings.budget.limit:.3g} ms (each finalist is timed against the reference again)")
    return settings, reference


def run_supernets(settings: RunSettings, task: Task, teacher: torch.nn.Module, *, progress: bool = False) -> SupernetRanker:
    """The run's supernets as its settings define them (bands, budget, recipe, latency settings, seed): trained, or
    read from the cache when a run with the same settings trained them (as for a warm start after the run)."""
    return prepare_supernets(
        settings.space, task, teacher, bands=settings.supernet["subspaces"], limit_ms=settings.budget.latency_limit_ms,
        recipe=settings.supernet_recipe(settings.space.family), rule=supernet_rule(settings),
        device=torch.device(settings.device), latency=settings.latency("search"), seed=settings.seed, progress=progress,
    )


def train_supernets(run: RunContext) -> SupernetRanker | None:
    """With a supernet proxy: the latency bands and a supernet per band that holds candidates within the budget,
    distilled from the teacher (or reused from the cache), recorded in the run folder."""
    settings, task, teacher, folder = run.settings, run.task, run.teacher, run.folder
    if settings.supernet is None:
        return None
    started = time.perf_counter()
    ranker = run_supernets(settings, task, teacher.model, progress=not settings.quiet)
    folder.write_supernets({**ranker.record(), "recipe": settings.supernet_recipe(settings.space.family).to_dict()}, ranker.histories,
                           ranker.weights_files())
    logger.info(f"supernet: {len(ranker.supernets)} of {ranker.bands.count} band(s) ready [{time.perf_counter() - started:.0f} s]")
    return ranker


def fit_run_latency_model(settings: RunSettings, task: Task, folder: RunFolder | None) -> LatencyModel | None:
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


def proxy_notes(proxies: list[str], families: list[str]) -> list[str]:
    """One sentence for each proxy asked for that cannot rank the space's students."""
    names = set(proxies) | set(ensemble_components(proxies))
    notes = []
    if "meco" in names and "vit" in families:
        notes.append("proxy meco cannot rank vit students: its smallest eigenvalue is ~0 whenever a layer has more "
                     "channels than tokens; rank transformers by params or the supernet.")
    return notes


def proxy_context(settings: RunSettings, task: Task, teacher: Teacher, space: SearchSpace,
                  ranker: SupernetRanker | None = None) -> ProxyContext:
    for note in proxy_notes(list(settings.proxies), getattr(space, "families", [space.family])):
        logger.warning(note)
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


def scorer(run: RunContext, predictor: LatencyModel | None, *, worker: int = 0, wait: bool = True, should_stop=None):
    """``score()``: take trials of the run's study (this process as worker ``worker``) until its slots are filled."""
    settings, task, teacher, folder, ranker = run.settings, run.task, run.teacher, run.folder, run.ranker
    space, budget = settings.space, settings.budget
    ctx = proxy_context(settings, task, teacher, space, ranker)
    evaluate = CandidateEvaluator(task, ctx, list(settings.proxies), torch.device(settings.device), settings.latency("search"),
                                  seed=settings.seed, budget=budget, recheck=settings.latency("final"), predictor=predictor,
                                  reference=run.reference)  # re-timed as the search goes
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


def search_stage(run: RunContext, predictor: LatencyModel | None = None) -> dict[str, dict]:
    """Score candidates in the study until its ``trials`` slots are filled; the scored candidates by id."""
    settings, space, budget = run.settings, run.settings.space, run.settings.budget
    started = time.perf_counter()
    study = scorer(run, predictor)()
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
