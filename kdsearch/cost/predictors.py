"""The latency model's two predictors, each with ``fit(configs, latency_ms)`` / ``predict(configs)``: OFA's lookup
table of per-block latencies and gradient boosting on the config; and ``errors``, how predictions held up."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kdsearch.spaces import SearchSpace


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE, Kendall's tau and nn-Meter's share within ±10 % of predictions against measurements."""
    from scipy.stats import kendalltau

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(predicted - measured) / measured
    tau = float(kendalltau(predicted, measured).statistic) if len(measured) > 1 else float("nan")
    return {"mape": float(rel.mean()), "p90_rel_error": float(np.percentile(rel, 90)), "kendall_tau": tau,
            "within_10pct": float((rel <= 0.10).mean()), "n": int(len(measured)), "bias": float(np.median(predicted / measured) - 1)}


class ConfigRegressor:
    """Gradient boosting on the encoded config, on log latency (latencies span orders of magnitude)."""

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space, self.seed = space, seed

    def encode(self, configs: list[dict]) -> np.ndarray:
        return self.space.encode(configs)

    def fit(self, configs: list[dict], latency_ms: np.ndarray) -> ConfigRegressor:
        from sklearn.ensemble import GradientBoostingRegressor

        self.model = GradientBoostingRegressor(n_estimators=600, learning_rate=0.05, max_depth=3, subsample=0.8,
                                               random_state=self.seed)
        self.model.fit(self.encode(configs), np.log(latency_ms))
        return self

    def predict(self, configs: list[dict]) -> np.ndarray:
        return np.exp(self.model.predict(self.encode(configs)))


class LookupTable:
    """Σ of per-block latencies (``table``: block key → ms), calibrated by ``a·Σ + b`` on measured networks."""

    def __init__(self, keys: Callable[[dict, tuple], list], input_shape: tuple, table: dict[str, float]):
        self.keys, self.input_shape, self.table = keys, input_shape, table
        self.a, self.b = 1.0, 0.0

    def block_keys(self, config: dict) -> list[str]:
        return [repr(k) for k in self.keys(config, self.input_shape)]

    def missing(self, config: dict) -> list[str]:
        return [k for k in self.block_keys(config) if k not in self.table]

    def sums(self, configs: list[dict]) -> np.ndarray:
        return np.array([sum(self.table[k] for k in self.block_keys(c)) for c in configs])

    def fit(self, configs: list[dict], latency_ms: np.ndarray) -> LookupTable:
        sums = self.sums(configs)
        design = np.stack([sums, np.ones_like(sums)], axis=1)
        # relative least squares: every network's error counts alike, the fast ones as much as the slow ones
        weights = 1.0 / np.asarray(latency_ms)
        (self.a, self.b), *_ = np.linalg.lstsq(design * weights[:, None], np.asarray(latency_ms) * weights, rcond=None)
        return self

    def predict(self, configs: list[dict]) -> np.ndarray:
        return self.a * self.sums(configs) + self.b
