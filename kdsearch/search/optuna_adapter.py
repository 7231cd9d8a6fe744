"""The few things kdsearch reads from Optuna that its public API does not offer, in one place.

Optuna's ``Study`` has no public way to count trials by state without loading them all (``get_trials`` copies every
trial: at the end of a 4,000-trial study that is the slow part of each worker's check), nor to re-read one trial by
id. These functions reach ``study._storage`` / ``study._study_id`` / ``trial._trial_id``; an Optuna upgrade that
moves them breaks this module alone (tests/test_search.py exercises each function).
"""

from __future__ import annotations

import optuna


def count_trials(study: optuna.Study, state: optuna.trial.TrialState | None = None) -> int:
    """How many trials the study holds (in ``state``), counted by the storage, not loaded."""
    return study._storage.get_n_trials(study._study_id, state=state)


def reread_trial(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """The trial as the storage holds it now (a running trial's attributes written by this or another process)."""
    return study._storage.get_trial(trial._trial_id)


__all__ = ["count_trials", "reread_trial"]
