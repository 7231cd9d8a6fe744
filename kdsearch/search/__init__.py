"""Search: an Optuna study over a :class:`SearchSpace`, the budget as Optuna's constraint.

The study lives in the run folder (SQLite) or at any Optuna storage URL; re-running resumes it.
Trial metrics are the study's user_attrs — there is no side database.
"""

from __future__ import annotations

from collections.abc import Callable

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
    measure_candidate,
    reference_models,
)
from kdsearch.spaces import SearchSpace, candidate_id

_NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")
# Optuna ≥ 5 reads constraints that the trial sets itself; older releases need constraints_func.
_LEGACY = {} if _NATIVE_CONSTRAINTS else {"constraints_func": lambda t: constraints(t)}

# name → builder(seed, space, budget, score, top_k) of an Optuna sampler; 'auto' is resolved by make_sampler.
# ``score`` is the ranking proxy's exact value when the search can afford it (an ExactScore), else None;
# ``top_k`` how many of the best feasible candidates the run will use (find distils its top-k).
Builder = Callable[[int, SearchSpace, Budget, Callable[[dict], float] | None, int], optuna.samplers.BaseSampler]
SAMPLERS: Registry[Builder] = Registry("sampler", SearchError)
SAMPLERS.add("constrained", lambda seed, space, budget, score, top_k: ConstrainedSampler(
    space, budget, seed=seed, score=score, exact_limit=getattr(score, "per_round", 4096), top_k=top_k))
SAMPLERS.add("brute", lambda seed, space, budget, score, top_k: optuna.samplers.BruteForceSampler(seed=seed))
SAMPLERS.add("random", lambda seed, space, budget, score, top_k: optuna.samplers.RandomSampler(seed=seed))
SAMPLERS.add("nsga2", lambda seed, space, budget, score, top_k: optuna.samplers.NSGAIISampler(seed=seed, **_LEGACY))
SAMPLERS.add("tpe", lambda seed, space, budget, score, top_k: optuna.samplers.TPESampler(
    seed=seed, multivariate=True, n_startup_trials=10, **_LEGACY))


def sampler_names() -> list[str]:
    """What --sampler accepts: 'auto' and every registered sampler."""
    return ["auto", *SAMPLERS.names()]


def check_sampler(name: str) -> str:
    return name if name == "auto" else SAMPLERS.canonical(name)


def resolve_sampler(name: str, space: SearchSpace, n_trials: int) -> str:
    """'auto': every candidate when the space fits in the trial budget, else the constrained sampler
    (benchmarks/search_regret.py: it reaches the constrained optimum where TPE, NSGA-II and random do not)."""
    if name != "auto":
        return name
    return "brute" if space.size <= n_trials else "constrained"


def make_sampler(name: str, space: SearchSpace, n_trials: int, seed: int, budget: Budget,
                 score: Callable[[dict], float] | None = None, top_k: int = 1) -> optuna.samplers.BaseSampler:
    return SAMPLERS.get(resolve_sampler(name, space, n_trials))(seed, space, budget, score, top_k)


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [trial.user_attrs.get("budget_excess", 0.0)]


def make_storage(url: str) -> str | optuna.storages.BaseStorage:
    """Optuna storage for ``url``; SQLite files get write-ahead logging.

    Each trial writes a dozen user attributes, one transaction each; with SQLite's default rollback
    journal and full fsync that was ~35 ms of a ~100 ms candidate. WAL with synchronous=NORMAL halves
    it and stays safe if the process dies (only an OS crash can lose the last trials, which a
    resumed run re-scores). Other URLs (PostgreSQL, MySQL, …) go to Optuna unchanged.
    """
    if not isinstance(url, str) or not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return url  # another URL, or a storage object (e.g. optuna.storages.InMemoryStorage)
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url)

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection, _record):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener existed are not reused
    return storage


def open_study(storage: str, study_name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=study_name, storage=make_storage(storage), sampler=sampler, direction="maximize", load_if_exists=True
    )


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
    top_k: int = 1,
) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials.

    ``cheap_score(config)``, when the objective can be computed exactly outside a trial (parameters, FLOPs,
    SynFlow: see ``exact_proxy``), lets the constrained sampler rank its most promising candidates on exact values.
    ``top_k``: how many of the best feasible candidates the caller will use; the constrained sampler confirms that
    many, not only the best. ``evaluate(config) -> metrics`` must return JSON-able numbers including ``objective`` and the
    budget's metric. Repeated configs are served from earlier trials of the same study.
    """
    study = open_study(storage, study_name, make_sampler(sampler, space, n_trials, seed, budget, cheap_score, top_k))
    trials = study.get_trials(deepcopy=False)  # one read of the study serves both counts below
    done = sum(1 for t in trials if t.state.is_finished())
    if done:
        # A resumed study needs fresh randomness: reseeded with `seed`, the sampler would propose the
        # configs of the first session again (all duplicates under the random sampler and TPE's startup).
        study.sampler = make_sampler(sampler, space, n_trials, seed + done, budget, cheap_score, top_k)
    known = {
        t.user_attrs["candidate_id"]: t.user_attrs
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and "candidate_id" in t.user_attrs
    }
    remaining = n_trials - done
    if remaining <= 0:
        return study

    def objective_fn(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        cid = candidate_id(config)
        metrics = known.get(cid)
        if metrics is None:
            metrics = {**evaluate(config), "candidate_id": cid, "config": config}
            known[cid] = metrics
        excess = budget.excess(metrics)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("budget_excess", excess)
        if _NATIVE_CONSTRAINTS:
            trial.set_constraint("budget", excess)
        return float(metrics[objective])

    from tqdm.auto import tqdm

    bar = tqdm(total=n_trials, initial=done, desc="scoring candidates", disable=None if progress else True, leave=False)
    # BruteForceSampler stops the study itself once every config has been tried.
    study.optimize(
        objective_fn,
        n_trials=remaining,
        timeout=timeout,
        catch=(RuntimeError, ValueError),
        callbacks=[lambda _s, _t: bar.update(1)],
        gc_after_trial=False,
    )
    bar.close()
    return study


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
    "make_sampler", "make_storage", "measure_candidate", "open_study", "reference_models", "resolve_sampler", "run_search",
    "sampler_names", "scored_candidates",
]
