"""The report's figures (plotly): the front, the proxy against latency, the learning curves, successive halving's
rungs and the supernets. A relative budget is drawn on the scale it decided on: each student's latency as a ratio to
the reference timed beside it, the budget line at the factor."""

from __future__ import annotations

import pandas as pd

from kdsearch.run import RunFolder, RunSettings


def human_count(value) -> str:
    """2524522 -> '2.52 M', 31234 -> '31.2 k' (parameters and FLOPs are counts, not floats)."""
    if value is None or pd.isna(value):
        return ""
    value = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f}"




ROLE_STYLE = {"top": ("crimson", "circle"), "band": ("steelblue", "diamond"), "control": ("gray", "x")}


def _log_range(values: list[float]) -> list[float]:
    """A log axis fitted to the data (teacher and budget included), with a small margin."""
    import math

    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    low, high = math.log10(min(values)), math.log10(max(values))
    margin = max(0.05, 0.08 * (high - low))
    return [low - margin, high + margin]


def on_ratio_scale(table: pd.DataFrame, settings: RunSettings) -> bool:
    """A relative budget whose students were each timed beside the reference: compared (and drawn) as the ratio of
    their latency to that reference, the figure the budget decided on."""
    return (settings.budget.factor is not None and "latency_ratio" in table and not table.empty
            and bool(table["latency_ratio"].notna().all()))


FAMILY_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def family_column(table: pd.DataFrame) -> pd.Series:
    """Each row's family, read from its config (JSON text in candidates.csv, or a dict)."""
    import json

    if "config" not in table:
        return pd.Series(["?"] * len(table), index=table.index)
    return table["config"].map(lambda c: (json.loads(c) if isinstance(c, str) else c).get("family", "?"))


def family_lines(table: pd.DataFrame, band_edges: list[float] | None = None) -> list[str]:
    """Which family wins in each band of the front (a union of spaces): the most accurate distilled student of each
    family per band, and the winner with its margin."""
    if table.empty or "band" not in table:
        return []
    families = family_column(table)
    if families.nunique() < 2:
        return []
    lines = ["families (a union of spaces): the best distilled student of each family in each latency band"]
    for band in sorted(b for b in table["band"].dropna().unique()):
        rows = table[table["band"] == band].assign(family=families)
        best = rows.sort_values("distilled_accuracy", ascending=False).drop_duplicates("family")
        parts = ", ".join(f"{r.family} {r.distilled_accuracy:.4f} ({r.candidate_id})" for r in best.itertuples())
        if len(best) < 2:
            lines.append(f"  band {int(band)}: only {best.iloc[0]['family']} was distilled here ({parts})")
            continue
        margin = best.iloc[0]["distilled_accuracy"] - best.iloc[1]["distilled_accuracy"]
        lines.append(f"  band {int(band)}: {best.iloc[0]['family']} wins by {100 * margin:+.1f} points ({parts})")
    return lines


def _front_figure(report):
    import plotly.graph_objects as go

    settings, teacher, table = report.settings, report.teacher, report.table
    budget = settings.budget
    budget_x, x_title, teacher_x = budget.latency_limit_ms, "latency p50 (ms)", (teacher.get("latency") or {}).get("p50_ms")
    if on_ratio_scale(table, settings):  # each student beside its own reference reading: the budget line at the factor
        table = table.assign(latency_p50_ms=table["latency_ratio"],
                             latency_p90_ms=table["latency_p90_ms"] / table["reference_p50_ms"])
        budget_x, x_title = budget.factor, f"latency p50 ÷ {budget.reference}'s, timed beside it"
        teacher_x = teacher_x / (budget.limit / budget.factor) if teacher_x and budget.resolved else None
    fig = go.Figure()
    xs, ys = [], []
    if not table.empty:
        kinds = table["role"].fillna("top").map(lambda r: r.split()[0])
        families = family_column(table)
        mixed = families.nunique() > 1  # a union of spaces: colour by family, the role by the marker's shape
        for family in dict.fromkeys(families):
            for kind, (color, symbol) in ROLE_STYLE.items():
                part = table[(kinds == kind) & (families == family)]
                if part.empty:
                    continue
                err = (part["latency_p90_ms"] - part["latency_p50_ms"]).clip(lower=0)
                label = {"top": "proxy's top picks", "band": "best of a latency band", "control": "random controls"}[kind]
                fig.add_scatter(
                    x=part["latency_p50_ms"], y=part["distilled_accuracy"], mode="markers",
                    name=f"{family}: {label}" if mixed else label, legendgroup=family if mixed else None,
                    error_x={"type": "data", "array": err, "symmetric": False},
                    text=part["candidate_id"] + " (" + part["role"].fillna("top") + ")<br>" + part["params"].map(human_count) + " params",
                    marker={"size": 11, "color": FAMILY_COLORS[list(dict.fromkeys(families)).index(family) % len(FAMILY_COLORS)]
                            if mixed else color, "symbol": symbol},
                )
        front = table[table["pareto"]].sort_values("latency_p50_ms")
        fig.add_scatter(x=front["latency_p50_ms"], y=front["distilled_accuracy"], mode="lines", name="Pareto front",
                        line={"dash": "dot", "color": "black"})
        xs += list(table["latency_p50_ms"]) + list(table["latency_p90_ms"])
        ys += list(table["distilled_accuracy"])
    if teacher_x:
        fig.add_scatter(x=[teacher_x], y=[teacher["val_accuracy"]], mode="markers",
                        name=f"teacher ({teacher['spec']})", marker={"symbol": "star", "size": 16, "color": "goldenrod"})
        xs.append(teacher_x)
        ys.append(teacher["val_accuracy"])
    if budget_x:
        fig.add_vline(x=budget_x, line_dash="dash", annotation_text=f"budget {settings.budget.text}")
        xs.append(budget_x)
    layout = {"title": "Distilled accuracy vs latency (p50, bar to p90)", "xaxis_title": x_title,
              "yaxis_title": "validation accuracy", "xaxis_type": "log"}
    if xs:
        layout["xaxis_range"] = _log_range(xs)
    if ys:
        low, high = min(ys), max(ys)
        pad = max(0.02, 0.08 * (high - low))
        layout["yaxis_range"] = [max(0.0, low - pad), min(1.0, high + pad)]
    fig.update_layout(**layout)
    return fig


def figures_html(report) -> list[str]:
    """Every figure of the report as an HTML fragment (plotly.js included once, in the first)."""
    import plotly.graph_objects as go

    settings, table, cands = report.settings, report.table, report.candidates
    budget_x, x_title, x = settings.budget.latency_limit_ms, "latency p50 (ms)", "latency_p50_ms"
    if on_ratio_scale(cands, settings):
        budget_x, x_title, x = settings.budget.factor, f"latency p50 ÷ {settings.budget.reference}'s, timed beside it", "latency_ratio"
    figs = [_front_figure(report)]
    proxy = settings.ranking_proxy
    if not cands.empty:
        fig = go.Figure()
        fig.add_scatter(
            x=cands[x], y=cands[f"proxy_{proxy}"], mode="markers", name="candidates",
            text=cands["candidate_id"], marker={"color": cands["finalist"].map({True: "crimson", False: "steelblue"})},
        )
        if budget_x:
            fig.add_vline(x=budget_x, line_dash="dash")
        fig.update_layout(title=f"Proxy '{proxy}' vs latency, every candidate within budget (red: distilled)",
                          xaxis_title=x_title, yaxis_title=proxy)
        figs.append(fig)
    curves = go.Figure()
    folder = RunFolder(report.run_dir)
    for _, row in table.iterrows():
        result = folder.student(row["candidate_id"]).result()
        if result:
            history = result.get("history", [])
            curves.add_scatter(x=[h["epoch"] for h in history], y=[h["val_accuracy"] for h in history], mode="lines+markers",
                               name=f"{row['candidate_id']} ({row.get('role') or 'top'})")
    curves.update_layout(title="Learning curves of the distilled students", xaxis_title="epoch", yaxis_title="validation accuracy")
    figs.append(curves)
    if report.halving and report.halving.get("rungs"):
        figs.append(_halving_figure(report))
    if report.supernets:
        figs.append(_supernet_figure(report.supernets))
    return [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]


def _supernet_figure(supernets: dict):
    """Each trained band's supernet: the hold-out accuracy of its largest and smallest subnet per epoch."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for band, history in sorted(supernets["histories"].items()):
        for end, dash in (("largest", "solid"), ("smallest", "dot")):
            fig.add_scatter(x=[h["epoch"] for h in history], y=[h.get(f"holdout_accuracy_{end}") for h in history],
                            mode="lines+markers", line={"dash": dash}, name=f"band {band + 1}, {end} subnet")
    edges = supernets["bands"].get("edges_ms", [])
    fig.update_layout(title=f"Supernets: hold-out accuracy with inherited weights (band edges {', '.join(f'{e:.2f}' for e in edges) or 'none'} ms)",
                      xaxis_title="epoch", yaxis_title="hold-out accuracy (training images)")
    return fig


def _halving_figure(report):
    """Every pool member's validation accuracy per epoch, up to where its rung cut it."""
    import plotly.graph_objects as go

    folder, state = RunFolder(report.run_dir), report.halving
    fig = go.Figure()
    cut_at = {}
    for rung in state["rungs"]:
        for cid in rung["members"]:
            if cid not in rung["survivors"]:
                cut_at[cid] = rung["index"]
    for cid in state["pool"]:
        student, history = folder.student(cid), []
        for index in range(len(state["rungs"]) - 1, -1, -1):
            record = student.rung(index)
            if record and record.get("history"):
                history = record["history"]
                break
        if history:
            label = f"{cid} (cut after rung {cut_at[cid]})" if cid in cut_at else f"{cid} (survivor)"
            fig.add_scatter(x=[h["epoch"] for h in history], y=[h["val_accuracy"] for h in history], mode="lines+markers",
                            name=label, line={"dash": "dot" if cid in cut_at else "solid"})
    for rung in state["rungs"][:-1]:
        fig.add_vline(x=rung["until_epoch"], line_dash="dash", line_color="gray")
    fig.update_layout(title="Successive halving: each pool member's learning curve up to the rung that cut it",
                      xaxis_title="epoch", yaxis_title="validation accuracy")
    return fig


