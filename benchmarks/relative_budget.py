"""A budget relative to a shipped network (``--budget 0.9x:<ResNet-20>``) against the anchor: a budget in ms copied
from one reading of that network.

The user's story (issue 13): ResNet-20 timed while another job ran read 12 % above its quiet figure, and a budget
copied from that reading let through students 7 % slower than ResNet-20. On this shared 2-core machine a second
process barely moves a 1-thread timing (-1 % to +3 % measured), but the machine itself drifts: ResNet-20 read 3.0 ms
in one minute and 2.4 ms a few minutes later. Here, on 32-px CIFAR inputs, 1 thread, FACTOR = 0.9:

* students — resnet_cifar candidates whose ratio to ResNet-20 (one quick interleaved reading) lies in 0.75-1.05,
  i.e. around the limit, where a decision can go wrong;
* anchor — ResNet-20 timed once at the start (LATENCY_FINAL), the limit 0.9 × that reading; each student timed
  later, once, as ``find`` times a finalist (LATENCY_FINAL) against that fixed limit;
* kdsearch — each student timed in alternation with ResNet-20 (``measure_against_reference``, as ``find`` does for a
  finalist under a relative budget), right after the anchor's reading of it;
* truth — at the end, each student and ResNet-20 in alternation again over ``--truth-rounds`` rounds: a student fits
  when its ratio is at most 0.9. (The truth is itself a timing; where it disagrees with kdsearch's decision by less
  than its own spread, neither is known to be wrong.)

Reported: per method, students let through that truly do not fit (and the slowest of them as a multiple of ResNet-20)
and fitting students refused.

    .venv/bin/python benchmarks/relative_budget.py        # writes benchmarks/results/relative_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir  # noqa: E402

FACTOR = 0.9
RESNET20 = {"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64}
SHAPE = (3, 32, 32)
QUICK = {"max_time_s": 0.2, "min_repeats": 10, "warmup_s": 0.02}


def students_near_the_limit(reference, n: int, seed: int) -> list:
    """Candidates whose quick interleaved ratio to the reference lies in 0.75-1.05."""
    from kdsearch.cost import measure_against_reference
    from kdsearch.spaces import create_model, load_space

    picked = []
    for config in load_space("resnet_cifar").sample(600, seed=seed):
        model = create_model(config, num_classes=10).eval()
        ours, theirs = measure_against_reference(model, reference, SHAPE, rounds=1, **QUICK)
        if 0.75 <= ours.p50_ms / theirs.p50_ms <= 1.05:
            picked.append(model)
        if len(picked) == n:
            break
    return picked


def main() -> None:
    from kdsearch.cost import LATENCY_FINAL, measure_against_reference, measure_latency
    from kdsearch.spaces import create_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=24)
    parser.add_argument("--truth-rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "relative_budget.json"))
    add_smoke(parser, "2 students, 1 round of ground truth")
    args = parser.parse_args()
    if args.smoke:
        args.students, args.truth_rounds, args.out = 2, 1, str(smoke_dir("relative_budget") / "relative_budget.json")
    torch.set_num_threads(1)
    load_before, started = os.getloadavg(), time.time()
    reference = create_model(RESNET20, num_classes=10).eval()
    students = students_near_the_limit(reference, args.students, args.seed)
    final = {**LATENCY_FINAL, "max_time_s": LATENCY_FINAL["max_time_s"] / 3}  # find's per-round allowance
    copied = measure_latency(reference, SHAPE, **LATENCY_FINAL).p50_ms  # the reading the anchor copies
    anchor, relative, reference_beside = [], [], []
    for student in students:
        anchor.append(measure_latency(student, SHAPE, **LATENCY_FINAL).p50_ms)
        ours, theirs = measure_against_reference(student, reference, SHAPE, **final)
        relative.append(ours.p50_ms / theirs.p50_ms)
        reference_beside.append(theirs.p50_ms)
    truth = []
    for student in students:
        ours, theirs = measure_against_reference(student, reference, SHAPE, rounds=args.truth_rounds, **final)
        truth.append(ours.p50_ms / theirs.p50_ms)
    truth, anchor, relative = map(np.array, (truth, anchor, relative))
    fits = truth <= FACTOR
    decisions = {"anchor: 0.9 x one reading, in ms": anchor <= FACTOR * copied,
                 "kdsearch: 0.9x:<ResNet-20>, timed beside it": relative <= FACTOR}
    rows = {}
    for name, accepted in decisions.items():
        rows[name] = {"accepted": int(accepted.sum()), "let_through_over": int((accepted & ~fits).sum()),
                      "refused_fitting": int((~accepted & fits).sum()),
                      "slowest_accepted_x_reference": float(truth[accepted].max()) if accepted.any() else None}
    record = {"factor": FACTOR, "students": len(students), "truly_fit": int(fits.sum()), "reference_copied_ms": copied,
              "reference_beside_students_ms": [float(min(reference_beside)), float(max(reference_beside))],
              "truth_ratio_range": [float(truth.min()), float(truth.max())], "methods": rows,
              "seconds": time.time() - started, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"ResNet-20: {copied:.3f} ms when copied; {min(reference_beside):.3f}-{max(reference_beside):.3f} ms beside the "
          f"students; {fits.sum()} of {len(students)} students truly within {FACTOR} x ResNet-20")
    print(f"{'method':45s} {'accepted':>8s} {'over, let through':>18s} {'fitting, refused':>17s} {'slowest accepted':>17s}")
    for name, r in rows.items():
        slowest = "-" if r["slowest_accepted_x_reference"] is None else f"{r['slowest_accepted_x_reference']:.3f}x"
        print(f"{name:45s} {r['accepted']:8d} {r['let_through_over']:18d} {r['refused_fitting']:17d} {slowest:>17s}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
