"""Search: an Optuna study over a :class:`SearchSpace`, the budget as Optuna's constraint.

The study lives in the run folder (SQLite) or at any Optuna storage URL; re-running resumes it.
Trial metrics are the study's user_attrs — there is no side database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import optuna

from kdsearch.cost import Budget
from kdsearch.exceptions import SearchError
from kdsearch.registry import Registry
from kdsearch.search.constrained import ConstrainedSampler
from kdsearch.search.evaluate import (
    CHEAP_PROXIES,
    EXACT_PER_ROUND,
    CandidateEvaluator,
    ExactScore,
    exact_proxy,
    latency_columns,
    measure_candidate,
    reference_models,
)
from kdsearch.search.optuna_adapter import count_trials, queue_retry, reread_trial, retried_trial_number, retry_history
from kdsearch.search.storage import HEARTBEAT_S, fail_stale_trials, is_storage_failure, make_storage, redact, unreachable
from kdsearch.spaces import SearchSpace, candidate_id
from kdsearch.spaces.union import is_union

logger = logging.getLogger(__name__)

_NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")
# Optuna ≥ 5 reads constraints that the trial sets itself; older releases need constraints_func.
_LEGACY = {} if _NATIVE_CONSTRAINTS else {"constraints_func": lambda t: constraints(t)}

# name → builder(seed, space, budget, score, top_k) of an Optuna sampler; 'auto' is resolved by make_sampler.
# ``score`` is the ranking proxy's exact value when the search can afford it (an ExactScore), else None;
# ``top_k`` how many of the best feasible candidates the run will use (find distils its top-k); ``lane`` the worker's
# index (samplers that propose in batches let concurrent workers take different entries).
Builder = Callable[[int, SearchSpace, Budget, Callable[[dict], float] | None, int, int], optuna.samplers.BaseSampler]
SAMPLERS: Registry[Builder] = Registry("sampler", SearchError)
SAMPLERS.add("constrained", lambda seed, space, budget, score, top_k, lane=0, metric_model=None: ConstrainedSampler(
    space, budget, seed=seed, score=score, exact_limit=getattr(score, "per_round", 4096), top_k=top_k, lane=lane,
    metric_model=metric_model))
SAMPLERS.add("brute", lambda seed, space, budget, score, top_k, lane=0, **_: optuna.samplers.BruteForceSampler(seed=seed))
SAMPLERS.add("random", lambda seed, space, budget, score, top_k, lane=0, **_: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.add("nsga2", lambda seed, space, budget, score, top_k, lane=0, **_: optuna.samplers.NSGAIISampler(seed=seed, **_LEGACY))
SAMPLERS.add("tpe", lambda seed, space, budget, score, top_k, lane=0, **_: optuna.samplers.TPESampler(
    seed=seed, multivariate=True, n_startup_trials=10, **_LEGACY))


def sampler_names() -> list[str]:
    """What --sampler accepts: 'auto' and every registered sampler."""
    return ["auto", *SAMPLERS.names()]


def check_sampler(name: str) -> str:
    return name if name == "auto" else SAMPLERS.canonical(name)


def resolve_sampler(name: str, space: SearchSpace, n_trials: int) -> str:
    """'auto': every candidate when the space fits in the trial budget, else the constrained sampler
    (benchmarks/search_regret.py: it reaches the constrained optimum where TPE, NSGA-II and random do not)."""
    if is_union(space):  # the constrained sampler counts one family's keys exactly; a union has several
        if name == "constrained":
            raise SearchError(f"--sampler constrained searches one space; --space {space.name} is a union: use --sampler "
                              "auto (TPE over the union), tpe, random or brute.")
        return ("brute" if space.size <= n_trials else "tpe") if name == "auto" else name
    if name != "auto":
        return name
    return "brute" if space.size <= n_trials else "constrained"


def make_sampler(name: str, space: SearchSpace, n_trials: int, seed: int, budget: Budget,
                 score: Callable[[dict], float] | None = None, top_k: int = 1, lane: int = 0,
                 metric_model: Callable[[list[dict]], np.ndarray] | None = None) -> optuna.samplers.BaseSampler:
    return SAMPLERS.get(resolve_sampler(name, space, n_trials))(seed, space, budget, score, top_k, lane, metric_model=metric_model)


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [trial.user_attrs.get("budget_excess", 0.0)]


def _interrupted(record) -> bool:
    """Optuna logs a trial that a Ctrl-C, a SIGTERM or a lost database ended as a failure, traceback included: those
    are said once, in one line, by the command (the trial goes back to the queue)."""
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in record.getMessage() or is_storage_failure(exc)


def _keep(record) -> bool:
    return not _interrupted(record)


def open_study(storage: str, study_name: str, sampler: optuna.samplers.BaseSampler | None = None,
               heartbeat_s: int = HEARTBEAT_S) -> optuna.Study:
    if not logging.getLogger("kdsearch").isEnabledFor(logging.DEBUG):  # -v keeps Optuna's own lines
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # child loggers' records meet the filter at the handler
        if _keep not in handler.filters:
            handler.addFilter(_keep)
    try:
        return optuna.create_study(study_name=study_name, storage=make_storage(storage, heartbeat_s), sampler=sampler,
                                   direction="maximize", load_if_exists=True)
    except Exception as exc:
        if isinstance(storage, str) and is_storage_failure(exc):
            raise unreachable(storage, exc) from None
        raise


def trial_slots(trials: list[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """Each trial's slot, by trial number. A retry (queued again after its worker died or was stopped: Optuna's
    ``failed_trial`` names the first of the chain) takes the slot of the trial it replaces; a fresh trial numbered
    ``k`` takes slot ``k`` minus the retries numbered below it (they used numbers, not slots). Numbers are handed out
    by the storage one at a time, so slots are unique and stable once a trial exists."""
    import bisect

    first = {t.number: retried_trial_number(t) for t in trials}
    retries = sorted(n for n, f in first.items() if f is not None)
    fresh = {n: n - bisect.bisect_left(retries, n) for n, f in first.items() if f is None}
    return {n: fresh[n] if f is None else fresh.get(f, -1) for n, f in first.items()}


def filled_slots(trials: list[optuna.trial.FrozenTrial], n_trials: int) -> int:
    """Slots ``0 .. n_trials - 1`` whose latest trial has finished. A slot is counted once however often it was
    tried, and surplus trials (slot ``n_trials`` or more: workers that raced for the last slot) not at all."""
    slots = trial_slots(trials)
    latest: dict[int, optuna.trial.FrozenTrial] = {}
    for t in trials:
        slot = slots[t.number]
        if 0 <= slot < n_trials and (slot not in latest or t.number > latest[slot].number):
            latest[slot] = t
    return sum(1 for t in latest.values() if t.state.is_finished())


def has_open_slot(study: optuna.Study, n_trials: int) -> bool:
    """Can a worker take a trial: a retry is waiting, or a new trial would still get a slot below ``n_trials``?"""
    if count_trials(study, optuna.trial.TrialState.WAITING):
        return True
    if count_trials(study) < n_trials:  # cheap: fewer trials than slots (the usual case, until the end)
        return True
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if retried_trial_number(t) is None) < n_trials


def requeue(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial, *, fresh: bool = False) -> None:
    """Queue a waiting trial for ``trial``'s slot (what Optuna's retry callback does for a worker that stopped
    beating), so that the next worker to look takes it: the same candidate again (an interrupted trial), or with
    ``fresh`` a new draw of the sampler (a trial whose candidate another worker already holds)."""
    frozen = trial if isinstance(trial, optuna.trial.FrozenTrial) else reread_trial(study, trial)
    queue_retry(study, frozen, fresh=fresh)


def run_search(
    space: SearchSpace,
    evaluate: Callable[[dict], dict],
    *,
    budget: Budget,
    objective: str,
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None = None,
    seed: int = 0,
    sampler: str = "auto",
    progress: bool = False,
    cheap_score: Callable[[dict], float] | None = None,
    metric_model: Callable[[list[dict]], np.ndarray] | None = None,
    top_k: int = 1,
    worker: int = 0,
    wait: bool = True,
    heartbeat_s: int = HEARTBEAT_S,
    should_stop: Callable[[], bool] | None = None,
) -> optuna.Study:
    """Take trials of the study until its slots ``0 .. n_trials - 1`` are all filled (``filled_slots``).

    Any number of processes may run this on one study (``kdsearch worker``): each takes the next free slot or a
    waiting retry, and a slot held by a worker that died goes back to the queue after the heartbeat's grace period.
    ``wait``: also wait for the slots other workers hold (find does; a worker leaves when nothing is free).
    ``worker``: this process's index among the run's workers (its sampler's seed differs from the others').
    ``should_stop()``: polled after each trial (a worker asked to leave). ``cheap_score(config)``, when the objective
    can be computed exactly outside a trial (parameters, FLOPs, SynFlow: see ``exact_proxy``), lets the constrained
    sampler rank its most promising candidates on exact values; ``top_k``: how many of the best feasible candidates the
    caller will use (the constrained sampler confirms that many). ``metric_model(configs)``: a prediction of the
    budget's metric (the device's latency model) that the constrained sampler screens its whole pool with. ``evaluate(config) -> metrics`` returns JSON-able
    numbers including ``objective`` and the budget's metric. Repeated configs are served from earlier trials.
    """
    study = open_study(storage, study_name, heartbeat_s=heartbeat_s)
    try:
        trials = study.get_trials(deepcopy=False)
        done = filled_slots(trials, n_trials)
        # A resumed study needs fresh randomness (reseeded with `seed`, the sampler would propose the first session's
        # configs again) and so does every worker beside the first.
        study.sampler = make_sampler(sampler, space, n_trials, seed + done + 7919 * worker, budget, cheap_score, top_k, worker,
                                     metric_model=metric_model)
        known = {t.user_attrs["candidate_id"]: t.user_attrs for t in trials
                 if t.state == optuna.trial.TrialState.COMPLETE and "candidate_id" in t.user_attrs}
        # samplers that never propose what the study holds (or what another worker is scoring) need no second look
        look_again = resolve_sampler(sampler, space, n_trials) not in ("constrained", "brute")
        objective_fn = _objective(study, space, evaluate, budget, objective, n_trials, known, look_again, worker)
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, initial=done, desc="scoring candidates", disable=None if progress else True, leave=False)
        _take_slots(study, space, objective_fn, n_trials, bar, timeout=timeout, wait=wait, heartbeat_s=heartbeat_s,
                    should_stop=should_stop or (lambda: False))
        bar.close()
    except Exception as exc:
        if isinstance(storage, str) and is_storage_failure(exc):
            raise unreachable(storage, exc) from None
        raise
    return study


def _take_slots(study, space, objective_fn, n_trials, bar, *, timeout, wait, heartbeat_s, should_stop) -> None:
    import time

    deadline = None if timeout is None else time.monotonic() + timeout

    def after_trial(study_, _trial):
        bar.update(1)
        if should_stop() or not has_open_slot(study_, n_trials):
            study_.stop()

    told = False
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or should_stop() or _exhausted(study, space, n_trials):
            return
        if has_open_slot(study, n_trials):
            # BruteForceSampler stops the study itself once every config has been tried.
            study.optimize(objective_fn, timeout=left, catch=(RuntimeError, ValueError), callbacks=[after_trial],
                           gc_after_trial=False)
            continue
        if not wait:
            return
        fail_stale_trials(study, started=STARTED)  # a slot whose worker died is queued again (after the grace period)
        missing = n_trials - filled_slots(study.get_trials(deepcopy=False), n_trials)
        if missing <= 0:
            return
        if not told:
            logger.info(f"search: waiting for {missing} trial(s) other workers hold (a worker that died frees its trial "
                        f"{heartbeat_s * 3} s after its last heartbeat)")
            told = True
        time.sleep(min(2.0, heartbeat_s / 2))


def _scored_by_another_worker(study: optuna.Study, trial: optuna.Trial, cid: str) -> dict | None:
    """When other workers are running and one of their trials holds the same candidate (sampled at the same moment:
    the params reach the storage only after sampling): this trial gives its slot to a fresh trial, which samples
    anew, and is pruned — up to 3 times in a row; after that it waits for the twin and takes its metrics (a space
    nearly exhausted). None when this trial should measure the candidate; it is then marked ``measuring``. A twin
    counts when it finished, is measuring, or is still deciding with a lower number, so a duplicate measurement
    remains possible only when two twins decide within one storage write of each other."""
    import time

    trial.set_user_attr("candidate_id", cid)  # what the others look for
    if count_trials(study, optuna.trial.TrialState.RUNNING) >= 2:  # alone: one cheap count per trial
        states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
        twins = [t for t in study.get_trials(deepcopy=False, states=states)
                 if t.user_attrs.get("candidate_id") == cid and t.number != trial.number
                 and (t.state == optuna.trial.TrialState.COMPLETE or t.user_attrs.get("measuring") or t.number < trial.number)]
        if twins and len(retry_history(reread_trial(study, trial))) < 3:
            requeue(study, trial, fresh=True)
            trial.set_user_attr("twin_of", twins[0].number)
            raise optuna.TrialPruned()
        for twin in sorted(twins, key=lambda t: (t.state != optuna.trial.TrialState.COMPLETE, t.number)):
            polls = 0
            while twin.state == optuna.trial.TrialState.RUNNING:
                time.sleep(0.05)
                polls += 1
                if polls % 20 == 0:
                    fail_stale_trials(study, started=STARTED)  # its worker may have died
                twin = reread_trial(study, twin)
            if twin.state == optuna.trial.TrialState.COMPLETE:
                trial.set_user_attr("served_from", twin.number)
                return {k: v for k, v in twin.user_attrs.items() if k not in _BOOKKEEPING}
    trial.set_user_attr("measuring", True)
    return None


def _exhausted(study: optuna.Study, space: SearchSpace, n_trials: int) -> bool:
    """Brute force tried every config (it stops the study below ``n_trials``) and nothing is in flight."""
    active = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if space.size >= n_trials or study.get_trials(deepcopy=False, states=active):
        return False
    return len({t.user_attrs.get("candidate_id") for t in study.get_trials(deepcopy=False)} - {None}) >= space.size


STARTED = "worker"  # the index of the worker that took the trial, its first write

# trial attributes that say how a trial ran, not what its candidate measured
_BOOKKEEPING = frozenset({STARTED, "served", "served_from", "measuring", "surplus", "error", "budget_excess", "twin_of"})


def _objective(study, space, evaluate, budget, objective, n_trials, known, look_again, worker):
    """One trial: its slot, its candidate (scored, or served from a trial that scored it), its constraint."""

    def objective_fn(trial: optuna.Trial) -> float:
        trial.set_user_attr(STARTED, worker)  # first: a trial without it long after it began lost its process
        if trial.number >= n_trials and trial_slots(study.get_trials(deepcopy=False))[trial.number] >= n_trials:
            trial.set_user_attr("surplus", True)  # raced another worker for the last slot
            study.stop()
            raise optuna.TrialPruned()
        config = space.suggest(trial)
        cid = candidate_id(config)
        metrics = known.get(cid)
        if metrics is None and look_again:
            known.update({t.user_attrs["candidate_id"]: t.user_attrs
                          for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                          if "candidate_id" in t.user_attrs})
            metrics = known.get(cid)
        if metrics is None:
            metrics = _scored_by_another_worker(study, trial, cid)
        if metrics is not None:
            trial.set_user_attr("served", True)  # not measured by this trial: an earlier trial's (or a twin's) metrics
        else:
            try:
                metrics = {**evaluate(config), "candidate_id": cid, "config": config}
            except (RuntimeError, ValueError) as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])  # failed for good: its slot is done
                raise
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): the slot goes back to the queue
                requeue(study, trial)
                raise
            known[cid] = metrics
        excess = budget.excess(metrics)
        for key, value in metrics.items():
            if key not in _BOOKKEEPING:  # a served trial copies the metrics, not how the other trial got them
                trial.set_user_attr(key, value)
        trial.set_user_attr("budget_excess", excess)
        if _NATIVE_CONSTRAINTS:
            trial.set_constraint("budget", excess)
        return float(metrics[objective])

    return objective_fn


def scored_candidates(study: optuna.Study) -> dict[str, dict]:
    """One row per distinct candidate of the study (the first trial that scored it), keyed by candidate id."""
    rows: dict[str, dict] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        cid = t.user_attrs.get("candidate_id")
        if cid and cid not in rows:
            rows[cid] = {"trial": t.number, **t.user_attrs}
    return rows


__all__ = [
    "CHEAP_PROXIES", "EXACT_PER_ROUND", "SAMPLERS", "CandidateEvaluator", "ExactScore", "ConstrainedSampler", "check_sampler", "constraints", "exact_proxy",
    "fail_stale_trials", "filled_slots", "has_open_slot", "make_sampler", "latency_columns", "make_storage", "measure_candidate", "open_study", "redact", "requeue", "trial_slots", "reference_models", "resolve_sampler", "run_search",
    "sampler_names", "scored_candidates",
]
