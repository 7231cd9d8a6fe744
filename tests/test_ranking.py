"""The one rule for "the best student" (find, report, export) and the self-check's noise intervals."""

import pandas as pd
import pytest

from kdsearch.distill.ranking import best_first, difference_se, ties
from kdsearch.report import SelfCheck, self_check


def students(*rows):
    return pd.DataFrame([{"candidate_id": c, "distilled_accuracy": a, "latency_p50_ms": ms} for c, a, ms in rows])


def test_accuracies_within_the_noise_tie_and_the_faster_student_wins():
    table = students(("slow", 0.9917, 9.8), ("fast", 0.9889, 2.1), ("worse", 0.9667, 1.0))
    # on 360 images 0.9917 vs 0.9889 is one image: a tie; 0.9667 is clearly below
    assert ties(0.9917, 0.9889, 360) and not ties(0.9917, 0.9667, 360)
    assert list(best_first(table, 360)["candidate_id"]) == ["fast", "slow", "worse"]
    # on 100,000 images the same gap is real: accuracy decides
    assert list(best_first(table, 100_000)["candidate_id"]) == ["slow", "fast", "worse"]
    # without a validation size only equal accuracies tie
    assert list(best_first(students(("a", 0.9, 5.0), ("b", 0.9, 1.0), ("c", 0.8, 0.5)), None)["candidate_id"]) == ["b", "a", "c"]


def test_difference_se_is_the_binomial_standard_error():
    assert difference_se(0.5, 0.5, 100) == pytest.approx((0.25 / 100 * 2) ** 0.5)
    assert best_first(students(), 100).empty


class _Settings:
    proxies, ranking_proxy = ("params",), "params"


def _table(accs, roles, params):
    return pd.DataFrame({"distilled_accuracy": accs, "role": roles, "params": params, "flops": params,
                         "latency_p50_ms": [1.0 + i for i in range(len(accs))]})


def test_a_one_image_difference_is_not_distinguishable_and_a_large_one_is():
    small = _table([0.9917, 0.9889, 0.9889, 0.9861], ["top", "top", "control", "control"], [4, 3, 2, 1])
    check = self_check(small, _Settings(), n_val=360)
    assert check.verdict() == "indistinguishable"
    text = "\n".join(check.lines())
    assert "not distinguishable on 360 validation images" in text and "WORSE" not in text and "±" in text
    big = _table([0.70, 0.72, 0.50, 0.52], ["top", "top", "control", "control"], [4, 3, 2, 1])
    assert self_check(big, _Settings(), n_val=3000).verdict() == "better"
    worse = _table([0.50, 0.52, 0.70, 0.72], ["top", "top", "control", "control"], [4, 3, 2, 1])
    assert self_check(worse, _Settings(), n_val=3000).verdict() == "worse"


def test_tau_comes_with_an_interval_under_the_validation_noise():
    accs = [0.990, 0.989, 0.991, 0.988, 0.990, 0.987, 0.989]  # one or two images apart on 360
    check = self_check(_table(accs, ["top"] * 7, [7, 6, 5, 4, 3, 2, 1]), _Settings(), n_val=360)
    low, high = check.tau_intervals["params"]
    assert low < 0 < high
    assert any("no relation that 360 validation images can show" in line for line in check.lines())
    clear = [0.50 + 0.05 * i for i in range(7)]  # 5 points apart on 3,000 images: params orders them reliably
    check = self_check(_table(clear, ["top"] * 7, list(range(7))), _Settings(), n_val=3000)
    assert check.tau_intervals["params"][0] > 0.8


def test_a_self_check_without_a_validation_size_keeps_its_plain_figures():
    check = SelfCheck(picks_mean=0.6, controls_mean=0.5, n_picks=3, n_controls=1, taus={}, ranking_proxy="params")
    assert check.verdict() == "better" and "+10.0 points" in check.lines()[0]


def test_a_budget_the_teacher_meets_flags_the_students_slower_than_it():
    from kdsearch.cost import parse_budget
    from kdsearch.report import teacher_fits_lines

    class Settings:
        budget = parse_budget("20ms")

    table = students(("quick", 0.9, 2.0), ("slow", 0.92, 5.1))
    lines = teacher_fits_lines(table, {"latency": {"p50_ms": 3.9}}, Settings())
    assert len(lines) == 1 and "the teacher itself meets the budget (3.9 ms" in lines[0] and lines[0].endswith("slow")
    assert teacher_fits_lines(table, {"latency": {"p50_ms": 25.0}}, Settings()) == []  # the budget binds the teacher

    class ParamsBudget:
        budget = parse_budget("5Mparams")

    assert teacher_fits_lines(table, {"latency": {"p50_ms": 3.9}}, ParamsBudget()) == []
