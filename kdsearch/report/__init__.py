"""Report: read a run folder (never recompute it), print the front and the ranking's self-check, write ``report.html``.

The HTML embeds plotly.js, so it opens offline: distilled accuracy vs latency for every student (the proxy's top
picks, the best of each latency band, the random controls) with the Pareto front, the budget line and the teacher;
the self-check (picks vs controls, Kendall τ of every recorded proxy vs distilled accuracy); proxy score vs
latency for every candidate within budget; learning curves; the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdsearch.distill.ranking import best_first
from kdsearch.report.figures import family_lines, figures_html, human_count, on_ratio_scale
from kdsearch.run import RunFolder, RunSettings

TABLE_COLUMNS = ["candidate_id", "role", "band", "distilled_accuracy", "latency_p50_ms", "latency_p90_ms", "latency_ratio", "params", "flops",
                 "pareto", "teacher_source", "trial", "config"]
MIN_TAU_N = 5  # below this many distilled students a rank correlation says nothing
Z95 = 1.96  # the self-check's intervals are 95 % (normal approximation of the binomial validation noise)


@dataclass
class SelfCheck:
    """Did the ranking proxy pick well on this data? Its picks vs random controls, and rank correlations — each with
    the interval that the validation set's size allows (binomial noise of every student's accuracy on ``n_val``
    images), so a difference of one image is not reported as a finding."""

    picks_mean: float | None
    controls_mean: float | None
    n_picks: int
    n_controls: int
    taus: dict[str, tuple[float, float, int]]  # recorded proxy -> (Kendall tau, p-value, n) vs distilled accuracy
    ranking_proxy: str
    n_val: int | None = None  # validation images each accuracy was measured on
    difference_se: float | None = None  # binomial standard error of picks_mean - controls_mean
    tau_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95 % under the validation noise

    @property
    def difference(self) -> float | None:
        return None if self.picks_mean is None or self.controls_mean is None else self.picks_mean - self.controls_mean

    def verdict(self) -> str | None:
        """'better', 'worse', or 'indistinguishable' (within the 95 % interval of the validation noise)."""
        if self.difference is None:
            return None
        if self.difference_se is not None and abs(self.difference) <= Z95 * self.difference_se:
            return "indistinguishable"
        return "better" if self.difference > 0 else "worse"

    def lines(self) -> list[str]:
        out = []
        images = f"{self.n_val:,} validation images" if self.n_val else "this validation set"
        if self.difference is None:
            out.append("picks vs controls: no control student distilled (--controls 0, or no candidate within budget was "
                       "left once the picks and the front were chosen: more --trials) — nothing to compare")
        else:
            spread = f" ± {100 * Z95 * self.difference_se:.1f}" if self.difference_se is not None else ""
            says = {"indistinguishable": f"not distinguishable on {images}",
                    "better": "the picks did better than the random controls",
                    "worse": "the picks did WORSE than the random controls"}[self.verdict()]
            out.append(f"picks vs controls: {100 * self.picks_mean:.1f} % (n={self.n_picks}) vs {100 * self.controls_mean:.1f} % "
                       f"(n={self.n_controls}): {100 * self.difference:+.1f}{spread} points — {says}")
            if self.verdict() == "worse":
                better = [name for name, (tau, _, _) in self.taus.items()
                          if name != self.ranking_proxy and tau > self.taus.get(self.ranking_proxy, (-2,))[0]]
                if better:
                    out.append(f"  recorded proxies that ranked the students better: {', '.join(better)}")
        for name, (tau, p, n) in self.taus.items():
            low, high = self.tau_intervals.get(name, (None, None))
            if n < MIN_TAU_N:
                note = " — too few students to mean anything"
            elif low is not None and low <= 0 <= high:
                note = f" (95 % under validation noise {low:+.2f}..{high:+.2f}: no relation that {images} can show)"
            elif low is not None:
                note = f" (95 % under validation noise {low:+.2f}..{high:+.2f}; p = {p:.2f})"
            else:
                note = f" (p = {p:.2f})"
            out.append(f"Kendall τ of {name} vs distilled accuracy: {tau:+.2f} over n={n}{note}")
        return out


def self_check(table: pd.DataFrame, settings: RunSettings, n_val: int | None = None, *, repeats: int = 400) -> SelfCheck:
    """The self-check of a run's distilled students; ``n_val``: the validation images behind each accuracy (the
    intervals' noise: each student's accuracy redrawn as binomial(n_val, accuracy) / n_val, ``repeats`` times, seeded)."""
    import numpy as np
    from scipy.stats import kendalltau

    roles = table["role"].fillna("top") if "role" in table else pd.Series("top", index=table.index)
    picks, controls = table[roles == "top"], table[roles == "control"]
    taus, intervals = {}, {}
    rng = np.random.default_rng(0)
    recorded = [f"proxy_{p}" for p in settings.proxies] + ["params", "flops", "latency_p50_ms"]
    for column in dict.fromkeys(recorded):
        if column not in table:
            continue
        pairs = table[[column, "distilled_accuracy"]].dropna()
        if len(pairs) >= 2 and pairs[column].nunique() > 1 and pairs["distilled_accuracy"].nunique() > 1:
            tau, p = kendalltau(pairs[column], pairs["distilled_accuracy"])
            name = column.removeprefix("proxy_")
            taus[name] = (float(tau), float(p), len(pairs))
            if n_val:
                acc = pairs["distilled_accuracy"].to_numpy(float).clip(0, 1)
                draws = rng.binomial(int(n_val), acc, size=(repeats, len(acc))) / n_val
                sampled = [kendalltau(pairs[column], d).statistic for d in draws]
                sampled = np.nan_to_num(np.asarray(sampled, dtype=float))  # a draw with all accuracies equal: no order
                intervals[name] = (float(np.percentile(sampled, 2.5)), float(np.percentile(sampled, 97.5)))
    se = None
    if n_val and len(picks) and len(controls):
        def var_of_mean(accs: pd.Series) -> float:  # each accuracy binomial on n_val images
            return float(sum(a * (1 - a) / n_val for a in accs)) / len(accs) ** 2

        se = (var_of_mean(picks["distilled_accuracy"]) + var_of_mean(controls["distilled_accuracy"])) ** 0.5
    return SelfCheck(
        picks_mean=float(picks["distilled_accuracy"].mean()) if len(picks) else None,
        controls_mean=float(controls["distilled_accuracy"].mean()) if len(controls) else None,
        n_picks=len(picks), n_controls=len(controls), taus=taus, ranking_proxy=settings.ranking_proxy,
        n_val=n_val, difference_se=se, tau_intervals=intervals,
    )


@dataclass
class Report:
    run_dir: Path
    table: pd.DataFrame  # every distilled student, best first, with 'pareto' (over all of them), 'role' and 'band'
    check: SelfCheck
    candidates: pd.DataFrame  # every candidate within budget
    excluded: int  # candidates over budget, left out of the report
    teacher: dict
    settings: RunSettings
    html_path: Path
    supernets: dict | None = None  # RunFolder.supernets(): the bands and training curves, when the run ranked with them
    halving: dict | None = None  # RunFolder.halving(): the rungs of --select halving
    latency_notes: list[str] = field(default_factory=list)  # runtime, latency model and its error on the finalists

    def to_text(self) -> str:
        t, s = self.teacher, self.settings
        lat = t.get("latency") or {}
        lines = [
            f"run: {self.run_dir}   budget: {s.budget.text} ({s.device}, batch {s.latency_batch_size}, {s.threads} thread(s))",
            f"teacher: {t['spec']} — val acc {t['val_accuracy']:.4f}, {t['params'] / 1e6:.2f} M params"
            + (f", {lat['p50_ms']:.2f} ms p50" if lat else ""),
            f"candidates within budget: {len(self.candidates)} (left out over budget: {self.excluded})",
        ]
        if self.table.empty:
            lines.append("no distilled student yet")
        else:
            shown = _display(self.table)
            shown["pareto"] = shown["pareto"].map({True: "*", False: ""})
            lines.append(shown.drop(columns=["config"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            top = "the survivors of successive halving" if self.halving else "the proxy's picks at the budget"
            lines.append("* = on the Pareto front (no other student is both faster and more accurate); role: top = "
                         f"{top}, band N = best of latency band N (1 = fastest), control = drawn at random")
            lines.extend(self.check.lines())
            lines.extend(family_lines(self.table))
        lines.append(recipe_line(self.settings, self.halving))
        lines.extend(halving_lines(self.halving, self.settings.epochs))
        lines.extend(supernet_lines(self.supernets))
        lines.extend(self.latency_notes)
        lines.append(f"report: {self.html_path}")
        return "\n".join(lines)


def _display(table: pd.DataFrame) -> pd.DataFrame:
    shown = table[[c for c in TABLE_COLUMNS if c in table]].copy()
    for column in ("params", "flops"):
        if column in shown:
            shown[column] = shown[column].map(human_count)
    if "band" in shown:
        shown["band"] = shown["band"].map(lambda b: "" if pd.isna(b) else str(int(b)))
    return shown


def pareto_mask(latency: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True where no other point is at least as fast and as accurate, and strictly better in one."""
    mask = []
    for lat, acc in zip(latency, accuracy):
        dominated = ((latency <= lat) & (accuracy >= acc) & ((latency < lat) | (accuracy > acc))).any()
        mask.append(not dominated)
    return pd.Series(mask, index=latency.index)


def recipe_line(settings, halving: dict | None) -> str:
    """The recipe length the choice was made for: find's own distillations, and the one the student will ship with."""
    target = settings.target_epochs
    how = ("successive halving" if halving else f"the proxy's top-{settings.top_k}" if settings.selection.get("select") == "proxy"
           else "the selection")
    if target is None:  # a run from before --target-epochs
        return f"chosen by {how} at find's recipe of {settings.epochs} epochs (the run names no target recipe)"
    if target == settings.epochs:
        return f"chosen by {how} for a recipe of {target} epochs, the one find distilled each student with (--target-epochs)"
    finished = halving["plan"][-1]["until_epoch"] if halving and halving.get("plan") else settings.epochs
    if finished > settings.epochs:
        return (f"chosen by {how} for a student to be distilled for {target} epochs (--target-epochs): the survivors were "
                f"distilled for {finished} (--finish target), so the top picks are the students you ship; the bands and "
                f"controls for {settings.epochs}")
    return (f"chosen by {how} for a student to be distilled for {target} epochs (--target-epochs); find distilled each "
            f"for {settings.epochs}: the accuracies above are at {settings.epochs}")


def halving_lines(state: dict | None, epochs: int) -> list[str]:
    """The rungs of successive halving: who went on, what it cost, how each rung's order held up at the end."""
    from scipy.stats import kendalltau

    if not state or not state.get("rungs"):
        return []
    rungs = state["rungs"]
    counts = " -> ".join(str(len(r["members"])) for r in rungs)
    top_k_full = state["full_top_k_epochs"]
    lines = [f"halving: {counts} students (eta {state['eta']}, design {state['design']}, signal {state['signal']}); "
             f"{state['student_epochs']} student-epochs, {state['student_epochs'] / top_k_full:.1f}x distilling the "
             f"survivors alone in full ({top_k_full})"]
    final = rungs[-1]
    finished = final["until_epoch"] >= epochs and "survivors" in state
    for rung in rungs:
        line = f"  rung {rung['index']}: {len(rung['members'])} to epoch {rung['until_epoch']}, kept {len(rung['survivors'])}"
        if finished and rung is not final:
            shared = final["members"]  # every survivor was scored at every rung
            ours = [rung["scores"][c] for c in shared]
            truth = [final["scores"][c] for c in shared]
            if len(shared) >= 2 and len(set(ours)) > 1 and len(set(truth)) > 1:
                tau = kendalltau(ours, truth)[0]
                line += f"; Kendall τ of its scores with the survivors' final ones {tau:+.2f} (n={len(shared)})"
        if rung.get("cut_in_noise"):
            tied = rung["cut_in_noise"]
            by_proxy = state["signal"] in ("accuracy+proxy", "rank_blend")
            line += (f"; the cut lay within the validation noise: {len(tied)} student(s) left out tied with the last kept "
                     f"({', '.join(tied[:3])}{', …' if len(tied) > 3 else ''}), "
                     + ("the proxy decided there" if by_proxy else "so noise decided there (--rung-signal accuracy+proxy "
                                                                   "lets the proxy decide)"))
        lines.append(line)
    proxy_top = state["pool"][0]
    reached = max((r["index"] for r in rungs if proxy_top in r["members"]), default=0)
    if finished and proxy_top in final["members"]:
        place = final["order"].index(proxy_top) + 1
        lines.append(f"  the proxy's top-1 ({proxy_top}) survived: place {place} of {len(final['members'])} at the end")
    else:
        lines.append(f"  the proxy's top-1 ({proxy_top}) was cut after rung {reached}")
    return lines


def supernet_lines(supernets: dict | None) -> list[str]:
    if not supernets:
        return []
    lines = []
    for band, history in sorted(supernets["histories"].items()):
        last = history[-1] if history else {}
        lines.append(f"supernet band {band + 1}: {len(history)} epochs, hold-out accuracy largest "
                     f"{last.get('holdout_accuracy_largest', float('nan')):.3f} / smallest {last.get('holdout_accuracy_smallest', float('nan')):.3f}")
    return lines


def teacher_fits_lines(table: pd.DataFrame, teacher: dict, settings: RunSettings) -> list[str]:
    """A budget that the teacher itself meets: students slower than their teacher are allowed, and named."""
    budget, latency = settings.budget, (teacher.get("latency") or {}).get("p50_ms")
    if not budget.met_at(latency):
        return []
    slower = table[table["latency_p50_ms"] > latency]["candidate_id"].tolist() if not table.empty else []
    line = (f"the teacher itself meets the budget ({latency:.3g} ms p50 within {budget.text}): a student slower than it "
            "is allowed but buys no speed")
    return [line + (f"; slower than the teacher: {', '.join(slower)}" if slower else "")]


def latency_lines(candidates: pd.DataFrame, settings: RunSettings, model: dict | None) -> list[str]:
    """Where latency was measured, and how the latency model's predictions held up against the finalists' timings."""
    budget = settings.budget
    lines = [f"latency: measured in {settings.runtime} ({settings.device}, batch {settings.latency_batch_size}, "
             f"{settings.threads} thread(s))"]
    if budget.factor is not None and budget.resolved:
        lines.append(f"budget: {budget.factor:g} x {budget.reference} ({budget.limit / budget.factor:.3g} ms when the run "
                     f"started, limit {budget.limit:.3g} ms); each candidate is held to the reference timed beside it (re-timed as "
                     "the search went, in alternation with each finalist): latency_ratio, the figure drawn")
    if model:
        held = model["validation"][model["chosen"]]
        lines.append(f"latency model: {model['chosen']} fitted on {model['samples']} measured candidates; held-out MAPE "
                     f"{held['mape']:.1%}, Kendall tau {held['kendall_tau']:.2f}, {held['within_10pct']:.0%} within ±10 %")
        if "latency_predicted_ms" in candidates and "finalist" in candidates:
            final = candidates[candidates["finalist"].astype(bool) & candidates["latency_predicted_ms"].notna()]
            if len(final):
                rel = (final["latency_predicted_ms"] - final["latency_p50_ms"]).abs() / final["latency_p50_ms"]
                over = int((~final["within_budget"].astype(bool)).sum())
                lines.append(f"finalists, predicted vs measured: MAPE {rel.mean():.1%} (max {rel.max():.1%}) over "
                             f"{len(final)}; {over} measured over the budget and were not distilled")
    return lines


def build_report(run_dir: str | Path) -> Report:
    """Read the run folder, compute the Pareto set over every distilled student and the self-check, (re)write report.html."""
    folder = RunFolder.open(run_dir, need_candidates=True)
    settings, candidates, teacher = folder.settings(), folder.candidates(), folder.teacher_record()
    within = candidates[candidates["within_budget"].astype(bool)].copy()
    table = within[within["distilled_accuracy"].notna()].copy()
    for column in ("role", "band", "teacher_source"):  # run folders written before the front existed
        if column not in table:
            table[column] = "top" if column == "role" else None
    speed = "latency_ratio" if on_ratio_scale(table, settings) else "latency_p50_ms"  # the scale the budget judged them on
    table["pareto"] = pareto_mask(table[speed], table["distilled_accuracy"]) if not table.empty else []
    data = folder.data_record()
    n_val = data.get("val_size")
    table = best_first(table, n_val).reset_index(drop=True)
    report = Report(
        run_dir=folder.path, table=table, check=self_check(table, settings, n_val), candidates=within,
        excluded=int(len(candidates) - len(within)), teacher=teacher, settings=settings, html_path=folder.report_html,
        supernets=folder.supernets(), halving=folder.halving(),
        latency_notes=latency_lines(candidates, settings, folder.latency_model()) + teacher_fits_lines(table, teacher, settings),
    )
    folder.write_report(_html(report, data))
    return report


def _html(report: Report, data: dict) -> str:
    import html

    table, teacher, settings, run_dir = report.table, report.teacher, report.settings, report.run_dir
    html_table = _display(table).to_html(index=False, float_format=lambda v: f"{v:.4f}")  # pandas escapes cells
    notes = (report.check.lines() + family_lines(table) + [recipe_line(settings, report.halving)] + halving_lines(report.halving, settings.epochs)
             + report.latency_notes)
    check = "".join(f"<li>{html.escape(line.strip())}</li>" for line in notes)
    body = "\n".join(figures_html(report))  # plotly writes names as JSON with < and > escaped
    e = html.escape  # every name comes from the user (a teacher spec, a folder, class names): text, never markup
    space = settings.space.name if settings.space else "?"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kdsearch report — {e(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{padding:4px 8px;border:1px solid #ccc;font-size:12px}}</style>
</head><body><h1>kdsearch report: {e(run_dir.name)}</h1>
<p>Teacher <b>{e(str(teacher['spec']))}</b> ({e(str(teacher['source']))}), val accuracy {teacher['val_accuracy']:.4f}.
Budget <b>{e(settings.budget.text)}</b> on {e(settings.device)} (batch {settings.latency_batch_size}, {settings.threads} thread(s)).
Data: {e(str(data.get('description', settings.data.data)))}. Space: {e(space)}.
Ranking proxy: {e(', '.join(settings.proxies))}. {len(report.candidates)} candidates within budget; {report.excluded} over budget are left out.</p>
<h2>Did the ranking work?</h2><ul id="self-check">{check}</ul>
{body}
<h2>Distilled students</h2>{html_table}
</body></html>"""


__all__ = ["Report", "SelfCheck", "build_report", "human_count", "pareto_mask", "self_check", "teacher_fits_lines"]
