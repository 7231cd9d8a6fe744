"""A latency model fitted on the device: predict a candidate's latency from its config instead of timing it.

Timing a candidate costs ~0.1-1 s (20 s under ``torch.compile``); a space of 43 million candidates needs a
predictor. At the start of a run a seeded sample of the space is measured for real (in the run's runtime, with
its threads), and two predictors are fitted and compared on a held-out quarter of that sample:

* ``lut`` — OFA's lookup table: every distinct block (the ``block_keys`` of the family's :class:`~kdsearch.spaces.families.FamilySpec`)
  timed — in eager torch inside the networks of the sample (forward hooks; the median over the networks it
  appears in), in other runtimes on its own — summed over a candidate's blocks, then calibrated (``a·sum + b``,
  least squares on the sample) for what that misses: the runtime's fixed cost per call, code between blocks;
* ``regressor`` — scikit-learn gradient boosting on the config (numeric keys as numbers, the others one-hot),
  on log latency.

The more accurate one (held-out MAPE) is refitted on the whole sample and used. Measurements (samples and
block timings) are cached per device, runtime, family, threads and input shape, so the next run on this machine
starts without measuring them again. Every finalist and distilled student is still measured for real.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from kdsearch._util import atomic_write_json, cache_dir, stable_hash
from kdsearch.cost.budget import LATENCY
from kdsearch.cost.latency import measure_latency, pinned_threads
from kdsearch.cost.predictors import ConfigRegressor, LookupTable, errors
from kdsearch.spaces import SearchSpace, create_model
from kdsearch.spaces.families import family_spec, latency_blocks

logger = logging.getLogger(__name__)

LATENCY_MODEL_CHOICES = ("auto", "on", "off")
AUTO_MIN_SPACE = 100_000  # auto: a space this large is screened with the model (timing each would take hours)
SAMPLE_SIZE = 160  # measured candidates; the held-out quarter of them decides between the predictors
# Sample and block timings: tighter than the search's (they train the model every later prediction relies on).
SAMPLE_LATENCY = {"max_time_s": 1.0, "rel_precision": 0.015, "min_repeats": 20, "warmup_s": 0.05}
BLOCK_LATENCY = {"max_time_s": 0.4, "rel_precision": 0.02, "min_repeats": 20, "warmup_s": 0.02}
DRIFT_WINDOW = 20  # real timings the drift correction looks back over
CONTEXT_REPEATS = 12  # forward passes whose per-block times (in context) are kept, after 3 of warm-up


def use_latency_model(setting: str, space: SearchSpace, runtime: str, metric: str) -> bool:
    """on / off as asked; auto: for a latency budget over a large space, or a runtime that compiles each network
    (never for a union of spaces: the model is fitted on one family's keys)."""
    from kdsearch.exceptions import SpaceError
    from kdsearch.spaces.union import is_union

    if is_union(space):
        if setting == "on":
            raise SpaceError(f"--latency-model on models one space's latency; --space {space.name} is a union: use "
                             "--latency-model off (every candidate is timed).")
        return False
    if setting != "auto":
        return setting == "on"
    return metric == LATENCY and (space.size >= AUTO_MIN_SPACE or runtime == "compile")


# --------------------------------------------------------------------------- the device's model
def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class MeasureSettings:
    """What a latency figure is valid for: the cache's key."""

    input_shape: tuple[int, ...]
    num_classes: int
    in_chans: int
    device: str = "cpu"
    runtime: str = "torch"
    threads: int = 1
    batch_size: int = 1

    def key(self, family: str) -> dict:
        device = torch.device(self.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else _processor()
        return {"family": family, "device": f"{device.type}:{name}", "runtime": self.runtime, "threads": self.threads,
                "batch_size": self.batch_size, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "in_chans": self.in_chans, "torch": torch.__version__, "runtime_version": _runtime_version(self.runtime)}

    def measure(self, model: nn.Module, input_shape: tuple | None = None, batch_size: int | None = None,
                settings: dict | None = None) -> float:
        return measure_latency(model, tuple(input_shape or self.input_shape), device=self.device, runtime=self.runtime,
                               threads=self.threads, batch_size=batch_size or self.batch_size,
                               **(settings or SAMPLE_LATENCY)).p50_ms


def _runtime_version(runtime: str) -> str | None:
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return None


@dataclass
class LatencyModel:
    """``predict(configs) -> ms`` for candidates of ``space`` on this device; see the module's docstring."""

    space: SearchSpace
    measure: MeasureSettings
    seed: int = 0
    samples: dict[str, tuple[dict, float]] = field(default_factory=dict)  # candidate id → (config, measured ms)
    table: dict[str, float] = field(default_factory=dict)  # block key → ms
    context: dict[str, list[float]] = field(default_factory=dict)  # in context: block key → its timings in networks
    profiled: set[str] = field(default_factory=set)  # candidate ids whose blocks were timed
    chosen: str | None = None
    validation: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    predictor: Any = None
    seconds: float = 0.0
    ratios: list[float] = field(default_factory=list)  # measured / fitted figure of candidates timed since the fit

    # ------------------------------------------------------------------ cache
    @property
    def cache_path(self) -> Path:
        return cache_dir() / "latency" / f"{self.space.family}-{stable_hash(self.measure.key(self.space.family), 16)}.json"

    def _load(self) -> None:
        try:
            cached = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return
        for sample in cached.get("samples", []):
            self.samples.setdefault(sample["id"], (sample["config"], float(sample["ms"])))
        self.profiled.update(cached.get("profiled", []))
        if self.in_context:
            for key, values in cached.get("context", {}).items():
                self.context.setdefault(key, []).extend(values)
            self.table.update({k: float(np.median(v)) for k, v in self.context.items()})
        else:
            self.table.update({k: float(v) for k, v in cached.get("blocks", {}).items()})

    def _save(self) -> None:
        samples = [{"id": cid, "config": c, "ms": ms} for cid, (c, ms) in self.samples.items()]
        blocks = {"context": self.context} if self.in_context else {"blocks": self.table}
        atomic_write_json(self.cache_path, {"key": self.measure.key(self.space.family), "samples": samples,
                                            "profiled": sorted(self.profiled), **blocks})

    def _in_space(self, config: dict) -> bool:
        space = self.space
        return (config.get("family") == space.family and all(config.get(k) == v for k, v in space.fixed.items())
                and all(config.get(k) in v for k, v in space.choices.items()))

    # ------------------------------------------------------------------ fitting
    def fit(self, n: int | None = None) -> LatencyModel:
        """Measure the sample of ``n`` (default SAMPLE_SIZE; what the cache lacks), fit both predictors, keep the
        better on held-out candidates."""
        started, n = time.perf_counter(), n or SAMPLE_SIZE
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        configs = self._measure_sample(n)
        latency = np.array([self.samples[cid][1] for cid in configs])
        listed = list(configs.values())
        lut = self._lookup_table(listed)
        order = np.random.default_rng(self.seed).permutation(len(listed))
        held, train = order[: len(order) // 4], order[len(order) // 4:]
        fitted: dict[str, Any] = {"regressor": ConfigRegressor(self.space, self.seed)}
        if lut is not None:
            fitted["lut"] = lut
        for name, predictor in fitted.items():
            predictor.fit([listed[i] for i in train], latency[train])
            self.validation[name] = errors(predictor.predict([listed[i] for i in held]), latency[held])
        self.chosen = min(self.validation, key=lambda name: self.validation[name]["mape"])
        self.predictor = fitted[self.chosen].fit(listed, latency)
        self.seconds = time.perf_counter() - started
        return self

    def _measure_sample(self, n: int) -> dict[str, dict]:
        """The seeded sample (cached figures reused), measured one candidate after another."""
        from kdsearch.spaces import candidate_id

        configs = {candidate_id(c): c for c in self.space.sample(n, seed=self.seed)}
        # figures cached from other runs of the same space also train the model
        configs.update({cid: c for cid, (c, _) in self.samples.items() if self._in_space(c)})
        todo = [cid for cid in configs if cid not in self.samples]
        if todo:
            logger.info(f"latency model: measuring {len(todo)} of {len(configs)} sample candidates ({self.measure.runtime}, "
                        f"{self.measure.threads} thread(s))")
        for i, cid in enumerate(todo):
            torch.manual_seed(self.seed)
            model = create_model(configs[cid], num_classes=self.measure.num_classes, in_chans=self.measure.in_chans)
            self.samples[cid] = (configs[cid], self.measure.measure(model))
            if (i + 1) % 20 == 0 or i + 1 == len(todo):
                self._save()  # an interrupted fit keeps what it measured
        return configs

    def _lookup_table(self, configs: list[dict]) -> LookupTable | None:
        block_keys = family_spec(self.space.family).block_keys
        if block_keys is None:
            self.notes.append(f"no lookup table: family {self.space.family!r} declares no latency blocks")
            return None
        if self.measure.runtime == "compile":
            self.notes.append("no lookup table under torch.compile: compiling every block alone costs ~20 s each")
            return None
        lut = LookupTable(block_keys, self.measure.input_shape, self.table)
        try:
            self.fill(lut, configs, every=True)
            self.fill(lut, self._covering_configs(lut))
        except Exception as exc:  # a block the runtime cannot run alone: the regressor still works
            self.notes.append(f"no lookup table: a block could not be timed alone ({type(exc).__name__}: {str(exc)[:120]})")
            return None
        return lut

    def _covering_configs(self, lut: LookupTable, draws: int = 4000) -> list[dict]:
        """Configs that hold every block a random draw of the space reaches (keys are computed, not built: µs each)."""
        seen, cover = set(), []
        for config in self.space.sample(min(draws, self.space.size), seed=self.seed + 1):
            new = set(lut.block_keys(config)) - seen
            if new:
                seen |= new
                cover.append(config)
        return cover

    @property
    def in_context(self) -> bool:
        """Eager torch: blocks are timed inside the whole network (hooks), with the caches the blocks before them leave.
        Timed alone, on the warm cache of their own repeats, mobilenetv3's 112-px blocks ran 2-3x faster than in the
        network (a held-out MAPE of 17 %, docs/benchmarks.md). Other runtimes fuse across blocks and have no hooks: there a
        block is timed alone (OFA's way), and the calibration and the regressor take up what that misses."""
        return self.measure.runtime == "torch"

    def fill(self, lut: LookupTable, configs: list[dict], *, every: bool = False) -> int:
        """Time the blocks of ``configs`` the table lacks (``every``: in context, every config not profiled yet, so
        that a block's figure is the median over the networks it appears in); returns how many configs were run."""
        from kdsearch.spaces import candidate_id

        if self.in_context:
            todo = [c for c in configs if candidate_id(c) not in self.profiled] if every else [c for c in configs if lut.missing(c)]
        else:
            todo = [c for c in configs if lut.missing(c)]
        if todo:
            logger.info(f"latency model: timing the blocks of {len(todo)} candidate(s) for the lookup table"
                        + (" (inside each network)" if self.in_context else " (each block alone)"))
        for config in todo:
            model = create_model(config, num_classes=self.measure.num_classes, in_chans=self.measure.in_chans).eval()
            timed = self._profile(model) if self.in_context else self._alone(model)
            keys = lut.block_keys(config)
            if len(keys) != len(timed):
                raise ValueError(f"family {self.space.family!r} declares {len(keys)} blocks but its model runs {len(timed)}")
            for key, value in zip(keys, timed):
                if self.in_context:
                    self.context.setdefault(key, []).append(value)
                elif key not in self.table:
                    self.table[key] = value() if callable(value) else value
            self.profiled.add(candidate_id(config))
        if self.in_context and todo:
            self.table.update({k: float(np.median(v)) for k, v in self.context.items()})
        if todo:
            self._save()
        return len(todo)

    def _blocks_run(self, model: nn.Module) -> list[tuple[nn.Module, tuple]]:
        seen: list[tuple[nn.Module, tuple]] = []
        hooks = [b.register_forward_pre_hook(lambda m, args, seen=seen: seen.append((m, tuple(args[0].shape))))
                 for b in latency_blocks(model)]
        with torch.no_grad():
            model(torch.zeros(self.measure.batch_size, *self.measure.input_shape))
        for hook in hooks:
            hook.remove()
        return seen

    def _alone(self, model: nn.Module) -> list:
        """Each block's timing alone (deferred: only blocks the table lacks are timed)."""
        return [lambda b=block, s=shape: self.measure.measure(b, s[1:], s[0], BLOCK_LATENCY)
                for block, shape in self._blocks_run(model)]

    def _profile(self, model: nn.Module, warmup: int = 3, repeats: int = CONTEXT_REPEATS) -> list[float]:
        """Each block call's median time (ms) inside the whole network's forward pass, in call order."""
        device = torch.device(self.measure.device)
        model.to(device)
        cuda = device.type == "cuda"
        calls: list[list[float]] = []
        state = {"call": 0, "start": 0.0}

        def before(module, args):
            if cuda:
                torch.cuda.synchronize(device)
            state["start"] = time.perf_counter()

        def after(module, args, output):
            if cuda:
                torch.cuda.synchronize(device)
            if state["call"] >= len(calls):
                calls.append([])
            calls[state["call"]].append((time.perf_counter() - state["start"]) * 1e3)
            state["call"] += 1

        hooks = []
        for block in latency_blocks(model):
            hooks += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
        x = torch.zeros(self.measure.batch_size, *self.measure.input_shape, device=device)
        with pinned_threads(self.measure.threads if not cuda else None), torch.inference_mode():
            for _ in range(warmup + repeats):
                state["call"] = 0
                model(x)
        for hook in hooks:
            hook.remove()
        return [float(np.median(times[warmup:])) for times in calls]

    # ------------------------------------------------------------------ use
    def raw_predict(self, configs: list[dict]) -> np.ndarray:
        """The fitted predictor's figures, for the machine as it was while the sample was timed."""
        if isinstance(self.predictor, LookupTable):
            self.fill(self.predictor, configs)  # a block the sample never reached is timed, then cached
        return self.predictor.predict(configs)

    def predict(self, configs: list[dict]) -> np.ndarray:
        """Latency (ms) of each config now: the fitted figure times the machine's drift since the fit."""
        return self.raw_predict(configs) * self.drift

    def observe(self, config: dict, measured_ms: float) -> None:
        """A candidate timed for real during the run (the search's re-timings): its ratio to the fitted figure
        tracks how much faster or slower the machine runs now than while the sample was timed. On the shared
        2-core machine that drift reached 10-15 % within minutes (docs/benchmarks.md), more than the predictor's own error."""
        self.ratios.append(float(measured_ms) / float(self.raw_predict([config])[0]))
        del self.ratios[:-DRIFT_WINDOW]

    @property
    def drift(self) -> float:
        """Median ratio of the last DRIFT_WINDOW real timings to their fitted figures (1 until 3 are known)."""
        return float(np.median(self.ratios)) if len(self.ratios) >= 3 else 1.0

    def predict_one(self, config: dict) -> float:
        return float(self.predict([config])[0])

    @property
    def rel_error(self) -> float:
        """The chosen predictor's 90th-percentile relative error on held-out candidates: the search re-measures
        candidates predicted within this margin of the budget."""
        return float(self.validation[self.chosen]["p90_rel_error"]) if self.chosen else 0.0

    def record(self) -> dict:
        return {"chosen": self.chosen, "validation": self.validation, "samples": len(self.samples),
                "blocks": len(self.table), "blocks_timed": "in context" if self.in_context else "alone", "fit_seconds": round(self.seconds, 1), "notes": self.notes,
                "cache": str(self.cache_path), "key": self.measure.key(self.space.family)}


def fit_latency_model(space: SearchSpace, measure: MeasureSettings, *, seed: int = 0, n: int | None = None) -> LatencyModel:
    """The fitted latency model of ``space`` on this device (from the cache where it holds the measurements)."""
    return LatencyModel(space, measure, seed=seed).fit(n)


__all__ = ["AUTO_MIN_SPACE", "LATENCY_MODEL_CHOICES", "ConfigRegressor", "LatencyModel", "LookupTable", "MeasureSettings",
           "errors", "fit_latency_model", "use_latency_model"]
