"""The tuning report of one search: a trials table, learning curves and a parallel-coordinates plot, as one
self-contained HTML page (inline SVG, no scripts). Data comes from MLflow: the search's parent run (tagged with the
DAG run id) and its nested trial runs."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from ml.experiments import PARENT_RUN_KIND, quoted

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class TrialRecord:
    name: str
    params: dict[str, str]
    final_metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch, value)]


def collect_trials(client: Any, dag_run_id: str) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
    """The parent run (as a dict) of the search for a DAG run, and its trials with per-epoch curves (`client`: an
    MlflowClient, ml.clients.mlflow_client)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    # The search's parent run, as ml.tune.tracking tags it.
    query = f"tags.`mlops.dag_run_id` = {quoted(dag_run_id)} and tags.`mlops.kind` = {quoted(PARENT_RUN_KIND)}"
    parents = client.search_runs(experiments, query, max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        return None, []
    parent = parents[0]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = {quoted(parent.info.run_id)}", max_results=1000
    )
    trials = []
    for child in children:
        curves = {}
        for key in child.data.metrics:
            if key.startswith("val_") or key == "train_loss":
                history = sorted(client.get_metric_history(child.info.run_id, key), key=lambda m: m.step)
                curves[key] = [(m.step, m.value) for m in history]
        trials.append(
            TrialRecord(
                child.info.run_name or child.info.run_id, dict(child.data.params), dict(child.data.metrics), curves
            )
        )
    summary = {
        "run_id": parent.info.run_id,
        "experiment_id": parent.info.experiment_id,
        "params": dict(parent.data.params),
        "metrics": dict(parent.data.metrics),
        "tags": {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")},
    }
    return summary, sorted(trials, key=lambda t: t.name)


def _scale(values: list[float], low: float, high: float) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [(low + high) / 2 for _ in values]
    vmin, vmax = min(finite), max(finite)
    span = (vmax - vmin) or 1.0
    return [low + (high - low) * ((v - vmin) / span if math.isfinite(v) else 0.5) for v in values]


def learning_curves_svg(trials: list[TrialRecord], metric: str, width: int = 640, height: int = 300) -> str:
    """One line per trial: `metric` by epoch."""
    series = [(t, t.curves.get(metric, [])) for t in trials if t.curves.get(metric)]
    if not series:
        return f"<p>No per-epoch values of {html.escape(metric)}.</p>"
    epochs = [e for _, points in series for e, _ in points]
    values = [v for _, points in series for _, v in points]
    pad = 40
    xs = _scale([float(e) for e in epochs], pad, width - pad)
    ys = _scale(values, height - pad, pad)
    parts, index = [], 0
    for n, (trial, points) in enumerate(series):
        xy = [(xs[index + i], ys[index + i]) for i in range(len(points))]
        index += len(points)
        color = PALETTE[n % len(PALETTE)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
            f"<title>{html.escape(trial.name)}</title></polyline>"
        )
        # Markers too: a trial that ASHA stopped after one epoch is a single point.
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in xy)
    low, high = min(values), max(values)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(metric)} by epoch">'
        f'<rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
        f'<text x="{pad}" y="20" font-size="12">{html.escape(metric)} by epoch '
        f"(min {low:.4g}, max {high:.4g}; epochs {min(epochs)}-{max(epochs)})</text>" + "".join(parts) + "</svg>"
    )


def parallel_coordinates_svg(trials: list[TrialRecord], metric: str, width: int = 760, height: int = 320) -> str:
    """One polyline per trial across its numeric hyper-parameters and the final metric."""
    if not trials:
        return "<p>No trials.</p>"
    axes = sorted({k for t in trials for k in t.params})
    axes.append(metric)

    def value(trial: TrialRecord, axis: str) -> float:
        raw = trial.final_metrics.get(axis) if axis == metric else trial.params.get(axis)
        try:
            return float(raw) if raw is not None else math.nan
        except ValueError:
            return float(sorted({t.params.get(axis, "") for t in trials}).index(str(raw)))  # categorical: its rank

    pad = 50
    step = (width - 2 * pad) / max(1, len(axes) - 1)
    columns = {axis: _scale([value(t, axis) for t in trials], height - pad, pad) for axis in axes}
    metric_values = [value(t, metric) for t in trials]
    order = _scale(metric_values, 0, len(PALETTE) - 1)
    lines = []
    for i, trial in enumerate(trials):
        coords = " ".join(f"{pad + j * step:.1f},{columns[a][i]:.1f}" for j, a in enumerate(axes))
        lines.append(
            f'<polyline fill="none" stroke="{PALETTE[int(order[i])]}" stroke-opacity="0.8" '
            f'points="{coords}"><title>{html.escape(trial.name)}</title></polyline>'
        )
    labels = "".join(
        f'<line x1="{pad + j * step:.1f}" y1="{pad}" x2="{pad + j * step:.1f}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="{pad + j * step:.1f}" y="{height - pad + 18}" font-size="11" text-anchor="middle">'
        f"{html.escape(axis)}</text>"
        for j, axis in enumerate(axes)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="parallel coordinates"><rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
        f"{labels}{''.join(lines)}</svg>"
    )


def render_report(title: str, parent: dict[str, Any] | None, trials: list[TrialRecord], metric: str) -> str:
    """The whole page."""
    esc = html.escape
    if parent is None:
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title></head><body>"
            f"<h1>{esc(title)}</h1><p>No tuning run found for this DAG run (yet).</p></body></html>"
        )
    param_names = sorted({k for t in trials for k in t.params})
    metric_names = sorted({k for t in trials for k in t.final_metrics})
    header = "".join(f"<th>{esc(n)}</th>" for n in ["trial", *param_names, *metric_names])
    rows = "".join(
        "<tr>"
        + f"<td>{esc(t.name)}</td>"
        + "".join(f"<td>{esc(str(t.params.get(p, '')))}</td>" for p in param_names)
        + "".join(f"<td>{t.final_metrics[m]:.4g}</td>" if m in t.final_metrics else "<td></td>" for m in metric_names)
        + "</tr>"
        for t in trials
    )
    summary = "".join(f"<li><b>{esc(k)}</b>: {esc(str(v))}</li>" for k, v in sorted(parent["tags"].items()))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:3px 6px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>
<h1>{esc(title)}</h1><p>MLflow parent run <code>{esc(parent["run_id"])}</code>: {len(trials)} trials.</p>
<ul>{summary}</ul>
<h2>Trials</h2><table id="trials"><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>
<h2>Learning curves</h2>{learning_curves_svg(trials, metric)}
<h2>Parallel coordinates</h2>{parallel_coordinates_svg(trials, metric)}
</body></html>"""
