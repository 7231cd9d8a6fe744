"""How many candidates the search scores per second: build + params/FLOPs + measured latency + default proxy.

The exact code path of ``kdsearch find`` (``search.CandidateEvaluator`` driven by ``search.run_search``,
Optuna random sampler by default, ``--sampler tpe`` for find's own; sqlite storage) on ``search_spaces/resnet_cifar.yaml`` at 32×32, with real CIFAR-10
images (../shared/data) as the proxy batch and a ResNet-56-type teacher. The one-time cost of the
ensemble's reference population is reported separately and included in ``seconds``.

    .venv/bin/python benchmarks/scoring_speed.py            # writes benchmarks/results/scoring_speed.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smoke import add_smoke, smoke_dir, thread_count  # noqa: E402


def main() -> None:
    from trainer_speed import TEACHER, cifar_folder

    from kdsearch.cost import parse_budget
    from kdsearch.data import load_task
    from kdsearch.proxies import ProxyContext, ensemble_components, parse_proxies
    from kdsearch.proxies.ensemble import REFERENCE_SIZE
    from kdsearch.run.settings import LATENCY_SEARCH
    from kdsearch.search import CandidateEvaluator, reference_models, run_search
    from kdsearch.spaces import create_model, load_space

    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--proxy", default="default")
    parser.add_argument("--budget", default="5ms")
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="random: every space region equally (the anchor); tpe: what find uses on large spaces")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scoring_speed.json"))
    add_smoke(parser, "10 candidates")
    args = parser.parse_args()
    if args.smoke:
        args.candidates, args.out = 10, str(smoke_dir("scoring_speed") / "scoring_speed.json")
    torch.set_num_threads(thread_count(2))
    task = load_task(str(cifar_folder()))
    space = load_space("resnet_cifar")
    proxies = parse_proxies(args.proxy)
    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10).eval()
    images, labels = task.sample_batch(64, seed=0)
    ctx = ProxyContext(teacher=teacher, images=images, labels=labels, num_classes=10, input_shape=task.input_shape,
                       reference_models=lambda: reference_models(space, task, torch.device("cpu"), REFERENCE_SIZE, 0))
    started = time.perf_counter()
    for component in ensemble_components(proxies):
        ctx.reference_scores(component)
    reference_s = time.perf_counter() - started
    evaluate = CandidateEvaluator(task, ctx, proxies, torch.device("cpu"), {"batch_size": 1, "threads": 1, **LATENCY_SEARCH}, seed=0)
    import tempfile

    search_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        storage, n_trials, distinct = f"sqlite:///{tmp}/study.db", args.candidates, 0
        # repeated configs are served from the study, not re-scored: go on until enough distinct ones
        while distinct < args.candidates:
            study = run_search(space, evaluate, budget=parse_budget(args.budget), objective=proxies[0], storage=storage,
                               study_name="scoring_speed", n_trials=n_trials, seed=0, sampler=args.sampler, progress=False)
            trials = [t for t in study.trials if t.state.name == "COMPLETE"]
            distinct = len({t.user_attrs.get("candidate_id") for t in trials})
            n_trials = len(trials) + args.candidates - distinct
    search_s = time.perf_counter() - search_start
    seconds = reference_s + search_s
    per_part = {}
    for key in ("latency_repeats",):
        values = [t.user_attrs.get(key) for t in trials if t.user_attrs.get(key) is not None]
        per_part["mean_" + key] = sum(values) / max(1, len(values))
    for name in proxies:
        values = [t.user_attrs.get(f"{name}_ms") for t in trials if t.user_attrs.get(f"{name}_ms") is not None]
        per_part[f"mean_{name}_ms"] = sum(values) / max(1, len(values))
    record = {
        "candidates": distinct, "trials": len(trials), "seconds": seconds,
        "reference_population_seconds": reference_s, "search_seconds": search_s,
        "candidates_per_second": distinct / seconds, "proxy": proxies[0], "sampler": args.sampler, "space": "resnet_cifar", "input": "3x32x32",
        "target": "500 candidates in <= 120 s", "target_met": distinct >= 500 and seconds <= 120,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(), **per_part,
    }
    print(f"| distinct candidates | trials | seconds | per second | reference population s | proxy |\n|---|---|---|---|---|---|\n"
          f"| {distinct} | {len(trials)} | {seconds:.1f} | {distinct / seconds:.2f} | {reference_s:.1f} | {proxies[0]} |")
    print(per_part)
    from kdsearch._util import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
