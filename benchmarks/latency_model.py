"""How good is the latency model, and how fast does it screen? Against the anchor: timing every candidate.

Per space (``mobilenetv3`` at 224 px, ``resnet_cifar`` at 32 px; CPU, 1 thread, eager torch by default), in one run:

1. fit the model as ``find`` does (a seeded sample of SAMPLE_SIZE candidates timed, both predictors fitted, the
   better kept) with an empty cache, so the fit time is the full price a first run pays;
2. time ``--held-out`` other candidates (a different seed) with the finalists' settings (LATENCY_FINAL), each
   followed by one of 10 sample candidates timed again;
3. the error of both predictors on them — MAPE, Kendall tau, nn-Meter's share within ±10 % — each refitted on the
   whole sample (the chosen one is what ``find`` uses), and of the chosen one corrected for the machine's drift as
   ``find`` corrects it (sample candidates re-timed between the held-out ones go through ``observe``), and the
   held-out timings against a second pass over them (their own reproducibility: a floor for any predictor);
4. the screening rate: candidates per minute through ``predict_one`` (one at a time, as the search calls it),
   against candidates per minute timed with the search's settings (LATENCY_SEARCH, what ``find`` did before);
5. at a budget at the held-out median: how many candidates the model lets through that measure over it — with no
   margin, and with the search's margin (a candidate predicted within the model's p90 error of the limit is
   timed for real).

    .venv/bin/python benchmarks/latency_model.py          # writes benchmarks/results/latency_model.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir  # noqa: E402

SPACES = {"mobilenetv3": 224, "resnet_cifar": 32}


def held_out_timings(model, space, measure, n: int, seed: int, anchors: int = 10) -> dict:
    """The held-out candidates timed twice (the second pass in reverse order), the first pass interleaved with
    re-timings of ``anchors`` sample candidates that go through ``model.observe`` as the search's re-timings do: the
    drift-corrected prediction of a candidate is its fitted figure times the drift known when it was timed."""
    from kdsearch.cost import LATENCY_FINAL
    from kdsearch.spaces import candidate_id, create_model

    def timed(config):
        torch.manual_seed(0)  # built one at a time, as the sample was
        return measure.measure(create_model(config, num_classes=measure.num_classes, in_chans=measure.in_chans),
                               settings=LATENCY_FINAL)

    configs = [c for c in space.sample(n + len(model.samples), seed=seed) if candidate_id(c) not in model.samples][:n]
    anchor_configs = [c for c, _ in list(model.samples.values())[:anchors]]
    first, drift = [], []
    for i, config in enumerate(configs):
        first.append(timed(config))
        drift.append(model.drift)  # what the search would have applied to this candidate
        anchor = anchor_configs[i % len(anchor_configs)]
        model.observe(anchor, timed(anchor))
    second = [timed(c) for c in reversed(configs)][::-1]
    return {"configs": configs, "first": np.array(first), "second": np.array(second), "drift": np.array(drift)}


def screening_rates(model, space, measure, n_predict: int, n_time: int) -> dict:
    from kdsearch.cost import LATENCY_SEARCH
    from kdsearch.spaces import create_model

    configs = space.sample(n_predict, seed=123)
    start = time.perf_counter()
    for config in configs:
        model.predict_one(config)
    predicted_per_min = len(configs) / (time.perf_counter() - start) * 60
    start = time.perf_counter()
    for config in configs[:n_time]:
        measure.measure(create_model(config, num_classes=measure.num_classes, in_chans=measure.in_chans),
                        settings=LATENCY_SEARCH)
    timed_per_min = n_time / (time.perf_counter() - start) * 60
    return {"predicted_per_min": predicted_per_min, "timed_per_min": timed_per_min,
            "speedup": predicted_per_min / timed_per_min}


def let_through(predicted: np.ndarray, measured: np.ndarray, margin: float) -> dict:
    """At a budget at the held-out median: candidates counted in by the model that measure over the budget."""
    limit = float(np.median(measured))
    counted_in = predicted <= limit
    near = np.abs(predicted - limit) <= margin * limit  # the search times these for real
    screened_in = counted_in & ~near
    return {"budget_ms": limit, "predicted_within": int(counted_in.sum()),
            "over_budget_no_margin": int((counted_in & (measured > limit)).sum()),
            "timed_for_real_with_margin": int(near.sum()),
            "over_budget_with_margin": int((screened_in & (measured > limit)).sum())}


def run_space(name: str, size: int, args) -> dict:
    from kdsearch.cost import MeasureSettings, fit_latency_model
    from kdsearch.cost.predictors import ConfigRegressor, errors
    from kdsearch.spaces import load_space

    space = load_space(name)
    measure = MeasureSettings(input_shape=(3, size, size), num_classes=10, in_chans=3, runtime=args.runtime, threads=1)
    started = time.perf_counter()
    model = fit_latency_model(space, measure, seed=0, n=args.sample)
    fit_s = time.perf_counter() - started
    held_out = held_out_timings(model, space, measure, args.held_out, seed=777)
    configs, measured, second = held_out["configs"], held_out["first"], held_out["second"]
    sample = [c for c, _ in model.samples.values()]
    sample_ms = np.array([ms for _, ms in model.samples.values()])
    predictors = {"regressor": ConfigRegressor(space).fit(sample, sample_ms)}
    if "lut" in model.validation:
        from kdsearch.cost.predictors import LookupTable
        from kdsearch.spaces.families import family_spec

        lut = LookupTable(family_spec(space.family).block_keys, measure.input_shape, model.table)
        model.fill(lut, configs)  # blocks the held-out candidates reach that the sample did not
        predictors["lut"] = lut.fit(sample, sample_ms)
    held = {k: errors(p.predict(configs), measured) for k, p in predictors.items()}
    raw = model.raw_predict(configs)
    predicted = raw * held_out["drift"]  # what the search would have used, drift-corrected by its re-timings
    held[f"{model.chosen}+drift"] = errors(predicted, measured)
    result = {
        "space": name, "input": size, "runtime": args.runtime, "threads": 1, "space_size": space.size,
        "sample": len(model.samples), "blocks_timed": len(model.table), "fit_s": fit_s, "chosen": model.chosen,
        "validation_within_sample": model.validation, "held_out": held, "held_out_n": len(configs),
        "held_out_ms_range": [float(measured.min()), float(measured.max())],
        "held_out_retest": errors(second, measured),  # the ground truth's own reproducibility: a floor for any predictor
        "drift_range": [float(held_out["drift"].min()), float(held_out["drift"].max())],
        "rates": screening_rates(model, space, measure, args.predict, args.time),
        "let_through": let_through(predicted, measured, model.rel_error), "model_rel_error_p90": model.rel_error,
    }
    print(json.dumps({k: result[k] for k in ("space", "chosen", "held_out", "held_out_retest", "rates", "let_through")}, indent=1))
    return result


def main() -> None:
    from kdsearch._util import configure_logging

    configure_logging()  # the library's progress lines, as the CLI shows them
    parser = argparse.ArgumentParser()
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--predict", type=int, default=5000, help="candidates predicted one at a time for the rate")
    parser.add_argument("--time", type=int, default=20, help="candidates timed with the search's settings for the rate")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_model.json"))
    add_smoke(parser, "resnet_cifar only, a sample of 24, 5 held out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.sample = None  # fit_latency_model's own sample size
    if args.smoke:
        args.spaces, args.held_out, args.predict, args.time, args.sample = "resnet_cifar", 5, 100, 2, 24
        args.out = str(smoke_dir("latency_model") / "latency_model.json")
    load_before = os.getloadavg()
    cache = tempfile.mkdtemp(prefix="kdsearch-latency-model-")  # an empty cache: the fit's full price (kept to study)
    os.environ["KDSEARCH_CACHE_DIR"] = cache
    results = [run_space(name, SPACES[name], args) for name in args.spaces.split(",")]
    record = {"results": results, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"{'space':14s} {'chosen':9s} {'predictor':9s} {'MAPE':>6s} {'tau':>5s} {'±10%':>5s} {'pred/min':>9s} {'timed/min':>9s}")
    for r in results:
        for k, e in {**r["held_out"], "retest": r["held_out_retest"]}.items():
            print(f"{r['space']:14s} {r['chosen']:9s} {k:9s} {e['mape']:6.1%} {e['kendall_tau']:5.2f} {e['within_10pct']:5.0%} "
                  f"{r['rates']['predicted_per_min']:9.0f} {r['rates']['timed_per_min']:9.0f}")
    print(f"wrote {args.out} (measurements cached in {cache})")


if __name__ == "__main__":
    main()
