"""The few things kdsearch reads from Optuna that its public API does not offer, in one place.

Optuna's ``Study`` has no public way to count trials by state without loading them all (``get_trials`` copies every
trial: at the end of a 4,000-trial study that is the slow part of each worker's check), nor to re-read one trial by
id. These functions reach ``study._storage`` / ``study._study_id`` / ``trial._trial_id``; an Optuna upgrade that
moves them breaks this module alone (tests/test_search.py exercises each function).

Retries: a unit whose worker died is queued again as Optuna's own ``RetryFailedTrialCallback`` (4.9+:
``RetryHeartbeatStaleTrialCallback``) queues it — a WAITING trial whose system attributes ``failed_trial`` and
``retry_history`` name the chain — so that the callback's public readers (``retried_trial_number``, ``retry_history``)
and our slots agree. The attribute names are that callback's bookkeeping, read here and nowhere else; checked with
Optuna 5.1.0 (tests/test_search.py compares our retry with the callback's own, so a change fails loudly).
"""

from __future__ import annotations

import optuna


def count_trials(study: optuna.Study, state: optuna.trial.TrialState | None = None) -> int:
    """How many trials the study holds (in ``state``), counted by the storage, not loaded."""
    return study._storage.get_n_trials(study._study_id, state=state)


def reread_trial(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The trial as the storage holds it now (a running trial's attributes written by this or another process)."""
    return study._storage.get_trial(trial._trial_id)


def heartbeat_interval(study: optuna.Study) -> int | None:
    """The seconds between a worker's heartbeats in the study's storage (None: a storage without heartbeats)."""
    get = getattr(study._storage, "get_heartbeat_interval", None)
    return None if get is None else get()


def retry_callback(max_retry: int) -> dict:
    """The RDBStorage keyword that queues a retry of a trial whose worker stopped beating: Optuna 4.9 renamed the
    callback and its argument (``heartbeat_stale_trial_callback``); both put a WAITING copy in the queue."""
    renamed = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if renamed is not None:
        return {"heartbeat_stale_trial_callback": renamed(max_retry=max_retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The first trial of the chain ``trial`` retries (None: not a retry) — ``RetryFailedTrialCallback
    .retried_trial_number`` without its ExperimentalWarning per call (slots read it for every trial)."""
    number = trial.system_attrs.get("failed_trial")
    return None if number is None else int(number)


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The trials retried before ``trial``, oldest first (``RetryFailedTrialCallback.retry_history``)."""
    return list(trial.system_attrs.get("retry_history", []))


def queue_retry(study: optuna.Study, frozen: optuna.trial.FrozenTrial, *, fresh: bool = False) -> None:
    """Queue a WAITING retry of ``frozen`` as Optuna's retry callback would: the same candidate (params, distributions,
    user attributes), or with ``fresh`` a new draw of the sampler (no fixed params)."""
    first = retried_trial_number(frozen)
    system = {"failed_trial": frozen.number if first is None else first, "retry_history": [*retry_history(frozen), frozen.number]}
    if fresh:  # ``fixed_params`` is what enqueue_trial leaves for the sampler; empty: the sampler draws anew
        study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, system_attrs={**system, "fixed_params": {}}))
    else:
        study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, params=frozen.params,
                                            distributions=frozen.distributions, user_attrs=frozen.user_attrs,
                                            system_attrs=system))


__all__ = ["count_trials", "heartbeat_interval", "queue_retry", "reread_trial", "retry_callback", "retried_trial_number", "retry_history"]
