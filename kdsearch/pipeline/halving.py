"""``find --select halving``: the teacher decides which students get the full recipe.

The pool (the proxy's top ``--pool`` within the budget, re-measured) is distilled in synchronous rungs
(``kdsearch.distill.halving.plan_rungs``): every member of rung r is a unit of the run's students' queue (a trial of
the ``kdsearch-students`` study that reports its validation accuracy each epoch), taken by this process and by any
worker; once all of rung r are done, the best ``1/eta`` by the rung's signal go on from their checkpoints. The last
rung brings the survivors to ``--epochs`` (``--finish target``: to ``--target-epochs``, so that their final order is
made at the recipe the student ships with); they are the run's top picks.

Synchronous, not Optuna's asynchronous SuccessiveHalvingPruner/HyperbandPruner: in ASHA the first students a process
takes are compared with nobody and run to the end, so with one process (or a few) the stage spends its budget on the
proxy's order before the teacher has a say (benchmarks/teacher_decides.py replays recorded curves through Optuna's
own pruner to measure that).

Resume: each finished rung of a student is a file (``rung<r>.json`` in its folder) and each decided rung a record in
``halving.json``; a student killed mid-rung continues from its last epoch checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from kdsearch.data import Task
from kdsearch.distill.halving import Rung, cut_in_noise, order_members, plan_rungs, restarts_for, rung_score, student_epochs
from kdsearch.exceptions import RunFolderError
from kdsearch.pipeline.worker import POLL_S, RunQueue, stop_point
from kdsearch.run import RunFolder, RunSettings
from kdsearch.training import Recipe

logger = logging.getLogger(__name__)


@dataclass
class HalvingState:
    """halving.json: the stage's plan and pool, and a record per decided rung (members, scores, order, survivors,
    the students a cut could not tell apart). Written after every rung; a resumed stage reads it back."""

    plan: list[dict]  # the rungs planned (kdsearch.distill.halving.Rung as dicts)
    pool: list[str]  # candidate ids, the proxy's order
    proxy: dict[str, float]  # each member's ranking-proxy score
    signal: str
    design: str
    eta: int
    target_epochs: int | None = None  # None: a stage started before targets were recorded (--epochs)
    student_epochs: int | None = None  # what the stage costs, in student-epochs
    full_top_k_epochs: int | None = None  # what the proxy's top-k would have cost
    rungs: list[dict] = field(default_factory=list)
    survivors: list[str] | None = None  # best first, once the last rung is decided

    @classmethod
    def read(cls, folder: RunFolder) -> HalvingState | None:
        record = folder.halving()
        known = {f.name for f in fields(cls)}
        return None if record is None else cls(**{k: v for k, v in record.items() if k in known})

    def write(self, folder: RunFolder) -> None:
        record = asdict(self)
        if self.survivors is None:
            del record["survivors"]  # as the stage has always written it before its last rung
        folder.write_halving(record)

    @property
    def rung_plan(self) -> list[Rung]:
        return [Rung(**r) for r in self.plan]


def halving_recipe(settings: RunSettings, state: HalvingState, *, epochs: int | None = None,
                   family: str | None = None) -> Recipe:
    """The recipe of every pool member: the run's, with the rungs' restarts (halving.json's plan) for the 'restart'
    design, to the last rung's end (``--finish target``: the target recipe). ``epochs``: to that many instead — a member
    the rungs cut that stands for a band or as a control is distilled on to ``--epochs``, like the other bands."""
    rungs = state.rung_plan
    return Recipe(**{**settings.recipe(family).to_dict(), "epochs": epochs or rungs[-1].until_epoch,
                     "restarts": restarts_for(rungs, state.design)})


def finish_epochs(settings: RunSettings) -> int:
    """Where the survivors are distilled to: ``--target-epochs`` with ``--finish target``, else ``--epochs``."""
    finish_at_target = settings.selection.get("finish") == "target" and settings.target_epochs
    return settings.target_epochs if finish_at_target else settings.epochs  # check_target_epochs: never below --epochs


def drain(queue: RunQueue, distil: Callable, settings: RunSettings, what: str = "student(s)") -> None:
    """Take units from the queue until none is left waiting or being distilled (here or on another worker)."""
    told = False
    while True:
        stop_point()  # a Ctrl-C that landed in a database call
        if queue.take_student(distil) is not None:
            continue
        pending = queue.pending()
        if not pending:
            return
        if not told:
            logger.info(f"waiting for {pending} {what} other workers are distilling (a worker that died frees its unit "
                        f"{settings.heartbeat_s * 3} s after its last heartbeat)")
            told = True
        time.sleep(POLL_S)


def run_halving(settings: RunSettings, task: Task, folder: RunFolder, queue: RunQueue, distil: Callable,
                pool: list[str], proxy: dict[str, float]) -> HalvingState:
    """Distil ``pool`` (candidate ids, the proxy's order) in rungs; the record written to halving.json, with
    ``survivors`` best first. ``proxy``: each member's ranking-proxy score (ties, and the report's comparison)."""
    sel = settings.selection
    rungs = plan_rungs(len(pool), settings.top_k, sel["eta"], sel["first_rung"], settings.epochs, finish_epochs(settings))
    plan = [asdict(r) for r in rungs]
    state = HalvingState.read(folder)
    if state is not None and (state.plan != plan or state.pool != pool or state.signal != sel["rung_signal"]
                              or state.design != sel["rung_design"]):
        raise RunFolderError(f"{folder.path} holds a successive-halving stage with another pool or other rung settings; "
                             "resume it with the options it was started with, or choose another --out.")
    target = settings.target_epochs or settings.epochs
    if state is None:
        state = HalvingState(plan=plan, pool=pool, proxy={c: proxy[c] for c in pool}, signal=sel["rung_signal"],
                             design=sel["rung_design"], eta=sel["eta"], target_epochs=target,
                             student_epochs=student_epochs(rungs), full_top_k_epochs=settings.top_k * rungs[-1].until_epoch)
        state.write(folder)
    members = list(pool)
    for rung in rungs:
        if rung.index < len(state.rungs):  # decided before an interruption
            members = state.rungs[rung.index]["survivors"]
            continue
        started = time.perf_counter()
        queue.enqueue([{"candidate_id": c, "rung": rung.index, "until_epoch": rung.until_epoch} for c in members],
                      lambda unit: folder.student(unit["candidate_id"]).rung(unit["rung"]) is not None)
        drain(queue, distil, settings, what=f"rung-{rung.index} student(s)")
        before = rungs[rung.index - 1].until_epoch if rung.index else 0
        scores, accuracy = {}, {}
        for cid in members:
            record = folder.student(cid).rung(rung.index)
            if record is None:
                raise RunFolderError(f"student {cid} has no record of rung {rung.index} although the queue is empty; "
                                     "run the same find command again to distil it.")
            history = record.get("history") or []
            usable = history and record.get("status") != "diverged"
            # extrapolated: the curve extended to the recipe the student will ship with
            scores[cid] = (rung_score(history, sel["rung_signal"], start_epoch=before, epochs=state.target_epochs or target)
                           if usable else float("-inf"))
            accuracy[cid] = float(history[-1]["val_accuracy"]) if usable else 0.0
        n_val = len(task.val_labels)
        order = order_members(scores, proxy, sel["rung_signal"], n_val)
        last = rung.index == len(rungs) - 1
        keep = len(members) if last else rungs[rung.index + 1].members
        survivors = order[:keep]
        state.rungs.append({"index": rung.index, "until_epoch": rung.until_epoch, "members": members,
                               "scores": scores, "order": order, "survivors": survivors,
                               # students the cut left out whose accuracy tied, within the validation noise, with the
                               # last it kept: the report says the rung could not tell them apart
                               "cut_in_noise": [] if last else cut_in_noise(order, accuracy, keep, n_val),
                               "seconds": time.perf_counter() - started})
        state.write(folder)
        logger.info(f"halving: rung {rung.index} — {len(members)} students to epoch {rung.until_epoch}, "
                    f"{'final order' if last else f'kept {keep}'} [{time.perf_counter() - started:.0f} s]")
        members = survivors
    state.survivors = members
    state.write(folder)
    return state


def rung_unit_score(record: dict) -> float:
    """What a rung unit reports as its trial's value: its last validation accuracy (0 for a diverged one)."""
    history = record.get("history") or []
    return rung_score(history, "accuracy") if history else 0.0


__all__ = ["HalvingState", "drain", "finish_epochs", "halving_recipe", "run_halving", "rung_unit_score"]
