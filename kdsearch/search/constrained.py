"""A sampler that aims at the constrained optimum: the best candidate by the proxy among those that fit.

TPE models "good vs bad" trials and knows the budget only as a penalty; on a latency budget it drifts
towards whatever region it sampled first (docs/benchmarks.md: on ``resnet_cifar`` at 2 ms it settled on wide,
shallow networks with 0.4× the parameters of the best that fit). This sampler models the two things that
decide the answer separately, from the study's own trials:

* the budget's metric (latency, FLOPs or parameters) and the proxy, each by an ensemble of randomized
  trees (scikit-learn's ExtraTrees) on the candidate's encoding (numeric keys as numbers, the others
  one-hot), on a log scale where the values are positive;
* proposals maximise expected improvement of the proxy over the best feasible candidate so far, times the
  probability of fitting the budget (the spread of the trees' predictions is the uncertainty) — the
  acquisition of constrained Bayesian optimisation (Gardner et al. 2014), with trees as in SMAC;
* when the proxy is cheap to compute exactly (``score``: parameters or FLOPs need no data), the search
  is proxy-first: candidates (all of them, or the model's ``exact_limit`` most promising) are scored
  exactly — a model cannot tell 0.1 % apart, and at the optimum that is the difference that matters —
  and the budget's metric is predicted by a ridge regression or randomized trees on the encoding plus
  the log proxy, whichever predicts the trials better out of sample, that error being the spread; each
  batch takes the largest gain the model is sure enough fits, the largest expected gain, and the
  improvement most likely to fit — the first and last over the ``top_k``-th best that fits (the caller
  distils its top-k, so the runners-up are confirmed too);
* over every candidate of the space when it has at most ``pool_size`` of them, otherwise over a seeded
  sample of that size plus all one-key mutations of the best feasible candidates found so far (a local
  search around the incumbents, as OFA's evolution does for its 10¹⁹ networks).

It is an Optuna sampler: the study stays the record, resume and several workers keep working (running
trials of other workers are not proposed again), and the first ``n_startup`` proposals are random.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

from kdsearch.cost import Budget
from kdsearch.spaces import SearchSpace


class ConstrainedSampler(optuna.samplers.BaseSampler):
    def __init__(self, space: SearchSpace, budget: Budget, *, seed: int = 0, n_startup: int = 20, batch: int = 4,
                 pool_size: int = 20_000, trees: int = 24, score: Callable[[dict], float] | None = None, exact_limit: int = 4096,
                 top_k: int = 1, lane: int = 0, metric_model: Callable[[list[dict]], np.ndarray] | None = None):
        self.space, self.budget, self.seed, self.top_k = space, budget, seed, max(1, top_k)
        self.lane = lane  # a worker's index: concurrent workers take different entries of the same proposal
        self.score, self.exact_limit, self.exact = score, exact_limit, {}  # exact proxy values by candidate index
        # a model of the budget's metric (the device's latency model): one more feature of the constraint's model
        self.metric_model, self.predicted = metric_model, {}
        self.n_startup, self.batch, self.pool_size, self.trees = n_startup, batch, pool_size, trees
        self.keys = list(space.choices)
        self._distributions = {k: CategoricalDistribution(v) for k, v in space.choices.items()}
        self._rng = np.random.default_rng(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._queue: list[tuple[int, ...]] = []
        self._pool = self._initial_pool()

    # ------------------------------------------------------------------ Optuna's sampler interface
    def infer_relative_search_space(self, study, trial) -> dict[str, CategoricalDistribution]:
        return dict(self._distributions)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space:
            return {}
        # one read of the study per trial: what was tried (or is running elsewhere) and what finished
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)
        trials = [(t, i) for t in study.get_trials(deepcopy=False, states=states) if (i := self._index(t.params)) is not None]
        seen = {i for _, i in trials}
        self._queue = [i for i in self._queue if i not in seen]
        if not self._queue:
            self._queue = self._propose(self._history(trials), seen)
        if not self._queue:
            return {}  # every candidate was tried: Optuna's random fallback repeats one (served from the study)
        # Workers that sample at the same moment see the same history and would propose the same candidate (its
        # params reach the storage only after sampling): while others are running, each takes its own lane's entry.
        others = sum(1 for t, _ in trials if t.state == optuna.trial.TrialState.RUNNING)
        index = self._queue.pop(self.lane % len(self._queue) if others else 0)
        return {k: self.space.choices[k][i] for k, i in zip(self.keys, index)}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._fallback.reseed_rng()

    # ------------------------------------------------------------------ the search
    def _initial_pool(self) -> np.ndarray:
        sizes = [len(self.space.choices[k]) for k in self.keys]
        if math.prod(sizes) <= self.pool_size:
            return np.array(list(itertools.product(*(range(n) for n in sizes))), dtype=np.int16)
        return np.stack([self._rng.integers(0, n, self.pool_size) for n in sizes], axis=1).astype(np.int16)

    def _index(self, params: dict[str, Any]) -> tuple[int, ...] | None:
        try:
            return tuple(self.space.choices[k].index(params[k]) for k in self.keys)
        except (KeyError, ValueError):
            return None

    def _history(self, trials: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encoded rows, proxy values and budget metric of the finished trials."""
        rows, objective, metric = [], [], []
        for t, index in trials:
            if t.state != optuna.trial.TrialState.COMPLETE or t.value is None or self.budget.metric not in t.user_attrs:
                continue
            rows.append(index)
            objective.append(float(t.value))
            metric.append(self.budget.comparable(t.user_attrs))  # a relative budget: per the reference timed beside it
        return np.array(rows, dtype=np.int16).reshape(-1, len(self.keys)), np.array(objective), np.array(metric)

    def _propose(self, history: tuple[np.ndarray, np.ndarray, np.ndarray], seen: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
        rows, objective, metric = history
        self._batch = self.batch if len(rows) < 100 else 2 * self.batch  # later rounds refine: refit half as often
        if len(rows) >= self.n_startup and len(np.unique(objective)) > 1:
            self._grow_pool(rows, objective, metric)
        pool = self._pool[[tuple(r) not in seen for r in self._pool]] if seen else self._pool
        if len(pool) == 0:
            return []
        if len(rows) < self.n_startup or len(np.unique(objective)) < 2:
            picks = self._rng.choice(len(pool), size=min(self._batch, len(pool)), replace=False)
            return [tuple(int(v) for v in pool[i]) for i in picks]
        score = None
        if self.score is None or len(pool) > self.exact_limit:
            score = self._acquisition(rows, objective, metric, pool)
        if self.score is not None:
            if score is not None:  # too many to score exactly: the model's most promising ones
                pool = pool[np.argsort(-score, kind="stable")[: self.exact_limit]]
            return self._proxy_first(rows, objective, metric, pool)
        order = np.argsort(-score, kind="stable")
        return [tuple(int(v) for v in pool[i]) for i in order[: self._batch]]

    def _exact(self, rows: np.ndarray) -> np.ndarray:
        """The proxy's exact value of each row (computed once per candidate, then cached)."""
        out = np.empty(len(rows))
        for n, r in enumerate(rows):
            key = tuple(int(v) for v in r)
            if key not in self.exact:
                self.exact[key] = float(self.score(self.space.config({k: self.space.choices[k][j] for k, j in zip(self.keys, key)})))
            out[n] = self.exact[key]
        return out

    def _latency_features(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Encoding plus the exact proxy on a (signed) log scale: for parameters or FLOPs the strongest predictor of
        latency; a proxy that spans orders of magnitude or reaches zero (SynFlow) stays finite in float32."""
        return np.concatenate([self._metric_features(rows), _log_scale(values)[:, None]], axis=1)

    def _metric_features(self, rows: np.ndarray) -> np.ndarray:
        """The encoding, plus the log of the metric model's prediction when there is one: with the device's latency
        model the whole pool is screened on a figure within a few percent of a timing (docs/benchmarks.md), and the trials
        (timed or predicted) calibrate it."""
        encoded = self._encode(rows)
        if self.metric_model is None:
            return encoded
        keys = [tuple(int(v) for v in r) for r in rows]
        todo = [k for k in dict.fromkeys(keys) if k not in self.predicted]
        if todo:
            configs = [self.space.config({key: self.space.choices[key][j] for key, j in zip(self.keys, k)}) for k in todo]
            self.predicted.update(zip(todo, np.asarray(self.metric_model(configs), dtype=float)))
        predicted = np.array([self.predicted[k] for k in keys])
        return np.concatenate([encoded, np.log(np.maximum(predicted, 1e-12))[:, None]], axis=1)

    def _proxy_first(self, rows, objective, metric, pool) -> list[tuple[int, ...]]:
        """Exact proxy values for the pool; a calibrated model of the budget's metric screens them; the batch takes
        turns between the largest gain over the best that fits among those that probably fit, the largest expected
        gain (gain × probability of fitting) and the gain most likely to fit."""
        from scipy.stats import norm

        values = self._exact(pool)
        x, x_pool = self._latency_features(rows, self._exact(rows)), self._latency_features(pool, values)
        y = np.log(np.maximum(metric, 1e-12))
        mu, sigma = self._calibrated_model(x, y, x_pool)
        p_fit = norm.cdf((math.log(self.budget.limit) - mu) / sigma)
        feasible = np.sort(objective[metric <= self.budget.limit])[::-1]
        best = feasible[0] if len(feasible) else -np.inf
        gain = np.maximum(values - best, 0.0) if np.isfinite(best) else values - values.min() + 1e-9
        # the caller uses the top-k: "sure" and "probable" count a gain over the k-th best that fits, so that once
        # nothing probably-fitting beats the best, the trials confirm the runners-up instead of idling (regret
        # simulation: top-3 share at 200 trials 0.33 -> 1.0 in most resnet_cifar cells; docs/benchmarks.md)
        kth = feasible[self.top_k - 1] if len(feasible) >= self.top_k else -np.inf
        gain_k = np.maximum(values - kth, 0.0) if np.isfinite(kth) else gain
        # the batch takes turns: the largest gain the model is sure enough fits; the largest expected gain; the
        # improvement most likely to fit (on a plateau of tied proxy values only the budget tells candidates apart,
        # and expected gain alone keeps chasing far larger, unlikely ones)
        sure = np.where(p_fit >= 0.5, gain_k, 0.0)
        expected = gain * p_fit
        probable = np.where(gain_k > 0, p_fit, 0.0)
        picks: list[int] = []
        turns = (sure, expected, probable, expected)
        for score in itertools.islice(itertools.cycle(turns), self.batch):  # proxy-first rounds stay at `batch`
            best_left = next((int(i) for i in np.argsort(-score, kind="stable") if score[i] > 0 and i not in picks), None)
            if best_left is not None:
                picks.append(best_left)
        if not picks:  # nothing above the best that fits: the next best ones (the top-k), most likely to fit first
            order = np.argsort(-np.where(p_fit >= 0.5, values, -np.inf), kind="stable")
            picks = [int(i) for i in order[: self._batch]]
        return [tuple(int(v) for v in pool[i]) for i in picks]

    def _calibrated_model(self, x: np.ndarray, y: np.ndarray, x_pool: np.ndarray) -> tuple[np.ndarray, float]:
        """Predictions of the budget's metric (log) for the pool and their spread, from whichever of a ridge
        regression (leave-one-out error, closed form) and randomized trees (out-of-bag error) predicts the trials
        better out of sample; the spread is that error, so "probably fits" means what it says."""
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.linear_model import RidgeCV

        ridge = RidgeCV(alphas=np.logspace(-3, 3, 13), store_cv_results=True).fit(x, y)
        loo = ridge.cv_results_[:, list(ridge.alphas).index(ridge.alpha_)]
        ridge_rmse = float(np.sqrt(np.mean(loo)))
        trees = ExtraTreesRegressor(n_estimators=self.trees, bootstrap=True, oob_score=True, random_state=self.seed, n_jobs=1)
        with warnings.catch_warnings():  # a trial left out of every bootstrap has no OOB figure: nanmean skips it
            warnings.simplefilter("ignore", UserWarning)
            trees.fit(x, y)
        oob = trees.oob_prediction_
        trees_rmse = float(np.sqrt(np.nanmean((y - oob) ** 2))) if np.isfinite(oob).any() else np.inf
        if ridge_rmse <= trees_rmse:
            return ridge.predict(x_pool), max(ridge_rmse, 0.01)
        return trees.predict(x_pool), max(trees_rmse, 0.01)

    def _grow_pool(self, rows: np.ndarray, objective: np.ndarray, metric: np.ndarray) -> None:
        """Add every one-key mutation of the best feasible candidates (only needed when the pool is a sample)."""
        if len(self._pool) >= math.prod(len(v) for v in self.space.choices.values()):
            return
        feasible = np.flatnonzero(metric <= self.budget.limit)
        top = feasible[np.argsort(-objective[feasible])[:5]] if len(feasible) else np.argsort(metric)[:5]
        known = {tuple(r) for r in self._pool}
        extra = []
        for r in rows[top]:
            for j, key in enumerate(self.keys):
                for v in range(len(self.space.choices[key])):
                    child = tuple(int(x) for x in r[:j]) + (v,) + tuple(int(x) for x in r[j + 1:])
                    if child not in known:
                        known.add(child)
                        extra.append(child)
        if extra:
            self._pool = np.concatenate([self._pool, np.array(extra, dtype=np.int16)])

    def _encode(self, rows: np.ndarray) -> np.ndarray:
        return self.space.encode_indices(rows)  # self.keys is list(space.choices): the same column order

    def _forest(self, x: np.ndarray, y: np.ndarray, x_pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.ensemble import ExtraTreesRegressor

        model = ExtraTreesRegressor(n_estimators=self.trees, random_state=int(self._rng.integers(2**31)), n_jobs=1)
        model.fit(x, y)
        per_tree = np.stack([tree.predict(x_pool) for tree in model.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def _acquisition(self, rows, objective, metric, pool) -> np.ndarray:
        from scipy.stats import norm

        x, x_pool = self._metric_features(rows), self._metric_features(pool)
        obj_rows, obj_values = rows, objective
        if self.exact:  # exact proxy values are cheap training points for the proxy's model (capped for speed)
            extra = list(self.exact.items())[-2000:]
            obj_rows = np.concatenate([rows, np.array([k for k, _ in extra], dtype=np.int16)])
            obj_values = np.concatenate([objective, np.array([v for _, v in extra])])
        # SynFlow spans 0 to 1e49 on nasbench201: on a linear scale a few outliers are the whole variance and
        # the model ranks nothing else (the search then missed the optimum in 7 of 9 nasbench201 SynFlow runs)
        positive = bool((obj_values > 0).all())  # one scale for the model's data and the trials it is compared with
        obj = _log_scale(obj_values, positive)
        shift, scale = obj.mean(), obj.std() or 1.0
        mu, sigma = self._forest(self._encode(obj_rows), (obj - shift) / scale, self._encode(pool))
        trial_obj = (_log_scale(objective, positive) - shift) / scale
        log_metric = np.log(np.maximum(metric, 1e-12))
        mu_c, sigma_c = self._forest(x, log_metric, x_pool)
        # floors: trees agree exactly on unseen leaves, which is not certainty
        sigma = np.maximum(sigma, 0.05)
        sigma_c = np.maximum(sigma_c, 0.02 + 0.03 * log_metric.std())
        p_fit = norm.cdf((math.log(self.budget.limit) - mu_c) / sigma_c)
        feasible = metric <= self.budget.limit
        if not feasible.any():
            return p_fit + 1e-3 * mu  # first find something that fits
        best = trial_obj[feasible].max()
        z = (mu - best) / sigma
        expected_improvement = sigma * (z * norm.cdf(z) + norm.pdf(z))
        return expected_improvement * p_fit


def _log_scale(values: np.ndarray, positive: bool | None = None) -> np.ndarray:
    """log where every value is positive, else a signed log1p: proxies that span orders of magnitude or reach
    zero (SynFlow) stay comparable and finite."""
    values = np.asarray(values, dtype=np.float64)
    if positive is None:
        positive = bool((values > 0).all())
    return np.log(values) if positive else np.sign(values) * np.log1p(np.abs(values))


__all__ = ["ConstrainedSampler"]
