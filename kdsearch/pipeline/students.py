"""Distilling the finalists: each accepted finalist is a unit of the run's students' queue, taken by this process and
by any worker (``student_job`` is what a taker runs); successive halving's rungs are units of the same queue."""

from __future__ import annotations

import logging
import time

import torch

from kdsearch.distill import create_loss
from kdsearch.exceptions import SpaceError, TrainingDiverged
from kdsearch.pipeline.halving import HalvingState, drain, halving_recipe, rung_unit_score
from kdsearch.pipeline.records import TOP, Finalist, RunContext, read_finalists
from kdsearch.pipeline.student import distill_student
from kdsearch.pipeline.worker import epoch_boundaries, stop_point
from kdsearch.training import Recipe, validation_logits

logger = logging.getLogger(__name__)


def distil_finalists(run: RunContext, finalists: dict[str, Finalist]) -> None:
    """Queue the accepted finalists in the storage and distil them here and on every worker that takes one; wait
    until none is left waiting or being distilled. Halving's survivors are done already; its cut pool is not distilled."""
    settings, folder, queue = run.settings, run.folder, run.queue
    accepted = [cid for cid, f in finalists.items() if f.accepted]
    roles = ", ".join(str(finalists[c].role) for c in accepted)
    if not create_loss(settings.loss_name, **settings.loss_options).logits_only:
        logger.info(f"students: {len(accepted)} ({roles}); the loss {settings.loss_name!r} needs the teacher's features, so each "
                    "student runs the live teacher")
    else:
        logger.info(f"students: {len(accepted)} ({roles}); the teacher's logits are computed once and shared by all of them")
    queue.enqueue([{"candidate_id": cid} for cid in accepted], lambda unit: folder.student(unit["candidate_id"]).result() is not None)
    queue.set_phase("distilling")
    drain(queue, student_job(run), settings)


def _epoch_reporter(trial):
    """After each epoch's checkpoint: the validation accuracy to the unit's trial (Optuna's intermediate values), then
    the stop point — a SIGTERM or Ctrl-C during the epoch hands the unit back here, nothing lost."""
    def on_epoch(h: dict) -> None:
        if trial is not None:
            trial.report(float(h["val_accuracy"]), int(h["epoch"]))
        stop_point()

    return on_epoch


def _recipe(run: RunContext, final: Finalist, rung: int | None) -> Recipe:
    """The run's recipe; for a rung unit, or a cut pool member distilled on, the rungs' schedule (halving.json
    precedes any rung unit): a survivor to the last rung's end, a cut member on to --epochs, like the bands."""
    settings = run.settings
    family = final.family
    if rung is None and final.rung is None:
        return settings.recipe(family)
    survivor = rung is not None or final.role == TOP
    return halving_recipe(settings, HalvingState.read(run.folder), epochs=None if survivor else settings.epochs,
                          family=family)


def inherited(ranker, final: Finalist):
    """The finalist's subnet with inherited weights (``--warm-start``); None, said in one line, where no trained
    supernet holds it (a subspace left untrained: its smallest member was timed over the budget) — it starts cold."""
    try:
        return ranker.subnet(final.config, final.latency_ms)
    except SpaceError as exc:
        logger.info(f"student {final.candidate_id}: starts from scratch, not warm: {exc}")
        return None


def student_job(run: RunContext):
    """``distil(unit, trial) -> accuracy``: one finalist distilled into its student folder (resumed from its
    checkpoint when another worker started it), to the full recipe, or to the end of its rung of successive halving
    (a unit with ``rung``), reporting its validation accuracy to the trial after each epoch."""
    settings, task, teacher, folder, ranker = run.settings, run.task, run.teacher, run.folder, run.ranker
    warm = ranker is not None and settings.supernet.get("warm_start")
    val_logits: list = []  # the teacher's validation logits, computed once per process (rungs record val_kd_loss)

    def distil(unit: dict, trial=None) -> float:
        cid, rung = unit["candidate_id"], unit.get("rung")
        final, student = read_finalists(folder)[cid], folder.student(cid)
        if rung is not None and (record := student.rung(rung)) is not None:
            return rung_unit_score(record)
        done = student.result()
        if done is not None and rung is None:
            return float(done.get("val_accuracy") or 0.0)
        started, role = time.perf_counter(), str(final.role)
        options: dict = {"on_epoch": _epoch_reporter(trial)}
        if rung is not None:
            if not val_logits:
                val_logits.append(validation_logits(teacher.model, task, device=torch.device(settings.device)))
            options.update(val_teacher_logits=val_logits[0], until_epoch=int(unit["until_epoch"]))
            role = f"rung {rung}"
        initial = inherited(ranker, final) if warm and done is None else None  # a finished last rung trains nothing
        try:  # ``done``: a last rung whose result was written before its rung record (a kill between the two)
            with epoch_boundaries():
                result = done or distill_student(
                    final.config, teacher.model, task, student, _recipe(run, final, rung), loss=settings.loss_name,
                    loss_options=settings.loss_options, device=torch.device(settings.device), progress=not settings.quiet,
                    desc=f"distilling {cid} ({role})",
                    extra={"candidate_id": cid, "role": str(final.role), "band": final.band,
                           "warm_start": initial is not None}, initial=initial, **options,
                )
        except TrainingDiverged as exc:
            logger.info(f"student {cid}: {exc} — marked failed")
            record = {"candidate_id": cid, "status": "diverged", "error": str(exc)}
            if rung is not None:
                student.write_rung(rung, {**record, "history": []})
            else:
                student.write_result(record)
            return 0.0
        seconds = time.perf_counter() - started
        if rung is not None:
            record = {"candidate_id": cid, "rung": rung, "until_epoch": int(unit["until_epoch"]), "status": result["status"],
                      "history": result["history"], "seconds": result.get("seconds")}
            student.write_rung(rung, record)
            logger.info(f"student {cid} ({role}): val acc {result['val_accuracy']:.4f} at epoch {unit['until_epoch']} [{seconds:.0f} s]")
            return rung_unit_score(record)
        logger.info(f"student {cid} ({role}): val acc {result['val_accuracy']:.4f} at {final.latency_ms:.3f} ms [{seconds:.0f} s]")
        return float(result["val_accuracy"])

    return distil
