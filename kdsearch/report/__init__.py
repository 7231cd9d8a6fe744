"""Report: read a run folder (never recompute it), print the Pareto table, write ``report.html``.

The HTML embeds plotly.js, so it opens offline: Pareto front of distilled accuracy vs latency with
the budget line and the teacher, proxy score vs latency for every candidate within budget, learning
curves of the distilled students, and the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdsearch.run import RunFolder, RunSettings

TABLE_COLUMNS = ["candidate_id", "trial", "distilled_accuracy", "latency_p50_ms", "latency_p90_ms", "params", "flops", "pareto", "config"]


@dataclass
class Report:
    run_dir: Path
    table: pd.DataFrame  # distilled students within budget, best first, with a 'pareto' column
    candidates: pd.DataFrame  # every candidate within budget
    excluded: int  # candidates over budget, left out of the report
    teacher: dict
    settings: RunSettings
    html_path: Path

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
            shown = self.table[[c for c in TABLE_COLUMNS if c in self.table]].copy()
            shown["params"] = (shown["params"] / 1e6).round(3).astype(str) + "M"
            shown["flops"] = (shown["flops"] / 1e6).round(1).astype(str) + "M"
            shown["pareto"] = shown["pareto"].map({True: "*", False: ""})
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            lines.append("* = on the Pareto front (no other student is both faster and more accurate)")
        lines.append(f"report: {self.html_path}")
        return "\n".join(lines)


def pareto_mask(latency: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True where no other point is at least as fast and as accurate, and strictly better in one."""
    mask = []
    for lat, acc in zip(latency, accuracy):
        dominated = ((latency <= lat) & (accuracy >= acc) & ((latency < lat) | (accuracy > acc))).any()
        mask.append(not dominated)
    return pd.Series(mask, index=latency.index)


def _figures(report: Report) -> list[str]:
    import plotly.graph_objects as go

    settings, teacher, table, cands = report.settings, report.teacher, report.table, report.candidates
    budget_ms = settings.budget.latency_limit_ms
    figs = []

    fig = go.Figure()
    if not table.empty:
        err = (table["latency_p90_ms"] - table["latency_p50_ms"]).clip(lower=0)
        fig.add_scatter(
            x=table["latency_p50_ms"], y=table["distilled_accuracy"], mode="markers", name="distilled students",
            error_x={"type": "data", "array": err, "symmetric": False}, text=table["candidate_id"] + "<br>" + table["config"],
            marker={"size": 10},
        )
        front = table[table["pareto"]].sort_values("latency_p50_ms")
        fig.add_scatter(x=front["latency_p50_ms"], y=front["distilled_accuracy"], mode="lines", name="Pareto front", line={"dash": "dot"})
    if teacher.get("latency"):
        fig.add_scatter(
            x=[teacher["latency"]["p50_ms"]], y=[teacher["val_accuracy"]], mode="markers", name=f"teacher ({teacher['spec']})",
            marker={"symbol": "star", "size": 16},
        )
    if budget_ms:
        fig.add_vline(x=budget_ms, line_dash="dash", annotation_text=f"budget {settings.budget.text}")
    fig.update_layout(title="Distilled accuracy vs latency (p50, bar to p90)", xaxis_title="latency p50 (ms)", yaxis_title="validation accuracy", xaxis_type="log")
    figs.append(fig)

    proxy = settings.ranking_proxy
    if not cands.empty:
        fig = go.Figure()
        fig.add_scatter(
            x=cands["latency_p50_ms"], y=cands[f"proxy_{proxy}"], mode="markers", name="candidates",
            text=cands["candidate_id"], marker={"color": cands["finalist"].map({True: "crimson", False: "steelblue"})},
        )
        if budget_ms:
            fig.add_vline(x=budget_ms, line_dash="dash")
        fig.update_layout(title=f"Proxy '{proxy}' vs latency, every candidate within budget (red: finalists)", xaxis_title="latency p50 (ms)", yaxis_title=proxy)
        figs.append(fig)

    curves = go.Figure()
    folder = RunFolder(report.run_dir)
    for cid in table["candidate_id"] if not table.empty else []:
        result = folder.student(cid).result()
        if result:
            history = result.get("history", [])
            curves.add_scatter(x=[h["epoch"] for h in history], y=[h["val_accuracy"] for h in history], mode="lines+markers", name=cid)
    curves.update_layout(title="Learning curves of the distilled students", xaxis_title="epoch", yaxis_title="validation accuracy")
    figs.append(curves)
    return [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]


def build_report(run_dir: str | Path) -> Report:
    """Read the run folder, compute the Pareto set of its distilled students, (re)write report.html."""
    folder = RunFolder.open(run_dir, need_candidates=True)
    settings, candidates, teacher = folder.settings(), folder.candidates(), folder.teacher_record()
    within = candidates[candidates["within_budget"].astype(bool)].copy()
    table = within[within["distilled_accuracy"].notna()].copy()
    table["pareto"] = pareto_mask(table["latency_p50_ms"], table["distilled_accuracy"]) if not table.empty else []
    table = table.sort_values("distilled_accuracy", ascending=False, ignore_index=True)
    report = Report(
        run_dir=folder.path, table=table, candidates=within, excluded=int(len(candidates) - len(within)),
        teacher=teacher, settings=settings, html_path=folder.report_html,
    )
    folder.write_report(_html(report, folder.data_record()))
    return report


def _html(report: Report, data: dict) -> str:
    table, teacher, settings, run_dir = report.table, report.teacher, report.settings, report.run_dir
    html_table = table[[c for c in TABLE_COLUMNS if c in table]].to_html(index=False, float_format=lambda v: f"{v:.4f}")
    body = "\n".join(_figures(report))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kdsearch report — {run_dir.name}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{padding:4px 8px;border:1px solid #ccc;font-size:12px}}</style>
</head><body><h1>kdsearch report: {run_dir.name}</h1>
<p>Teacher <b>{teacher['spec']}</b> ({teacher['source']}), val accuracy {teacher['val_accuracy']:.4f}.
Budget <b>{settings.budget.text}</b> on {settings.device} (batch {settings.latency_batch_size}, {settings.threads} thread(s)).
Data: {data.get('description', settings.data.data)}. Space: {settings.space.name if settings.space else '?'}.
Ranking proxy: {', '.join(settings.proxies)}. {len(report.candidates)} candidates within budget; {report.excluded} over budget are left out.</p>
{body}
<h2>Distilled students within budget</h2>{html_table}
</body></html>"""


__all__ = ["Report", "build_report", "pareto_mask"]
