"""The monitoring page as one self-contained HTML page (inline SVG and CSS, no scripts), in the tuning report's
style (ml.report): every name and value that comes from a topic or from the request is HTML-escaped."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from urllib.parse import urlencode

from ml.monitoring.aggregate import DriftPoint, DriftSeries, LatencyMinute, ModelVersion, version_order
from ml.monitoring.read import TopicRead
from ml.report import PALETTE
from ml.topics import DRIFT, SERVING_METRICS

esc = html.escape
TABLE_MINUTES = 120  # the newest minutes in a latency table; the chart has all of them
STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}th{background:#f4f4f4}.note{color:#8a4b00}
.drifted{color:#d62728;font-weight:bold}.feature{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"""


def minute_text(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M")


def _x(t: float, since: float, now: float, left: float, right: float) -> float:
    """A time on the page's axis: the whole period asked for, so every chart of the page lines up."""
    span = (now - since) or 1.0
    return left + (right - left) * min(1.0, max(0.0, (t - since) / span))


def _y(value: float, top_value: float, top: float, bottom: float) -> float:
    return bottom - (bottom - top) * (value / top_value if top_value > 0 else 0.0)


def psi_svg(feature: str, points: list[DriftPoint], threshold: float | None, since: float, now: float) -> str:
    """A feature's PSI by window (at each window's middle), the threshold as a dashed line, drifted windows red; a
    window without the feature breaks the line."""
    width, height, left, right, top, bottom = 360, 90, 34, 354, 8, 78
    values = [p.psi for p in points if p.psi is not None]
    top_value = max([*values, (threshold or 0) * 1.25, 1e-9])
    lines: list[str] = []
    run: list[str] = []
    for point in [*points, None]:
        if point is None or point.psi is None:
            if len(run) > 1:
                lines.append(f'<polyline fill="none" stroke="#1f77b4" points="{" ".join(run)}"/>')
            run = []
            continue
        x = _x((point.window_start + point.window_end) / 2, since, now, left, right)
        run.append(f"{x:.1f},{_y(point.psi, top_value, top, bottom):.1f}")
    marks = "".join(
        f'<circle cx="{_x((p.window_start + p.window_end) / 2, since, now, left, right):.1f}" '
        f'cy="{_y(p.psi, top_value, top, bottom):.1f}" r="{3.5 if p.drifted else 2}" '
        f'fill="{"#d62728" if p.drifted else "#1f77b4"}"><title>{esc(minute_text(p.window_start))}: PSI {p.psi:.3g}, '
        f"{p.rows} rows{', drifted' if p.drifted else ''}</title></circle>"
        for p in points
        if p.psi is not None
    )
    limit = ""
    if threshold is not None:
        y = _y(threshold, top_value, top, bottom)
        limit = (
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#d62728" stroke-dasharray="4 3">'
            f"<title>threshold {threshold:.3g}</title></line>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="PSI of {esc(feature)} by window"><rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
        f'<text x="2" y="{top + 8}" font-size="10">{top_value:.2g}</text>'
        f'<text x="2" y="{bottom}" font-size="10">0</text>{limit}{"".join(lines)}{marks}</svg>'
    )


def drift_section(series: DriftSeries, since: float, now: float) -> str:
    """A version's drift: one chart per feature, then one table row per window with each feature's PSI."""
    drifted = sum(1 for *_, d in series.windows if d)
    threshold = f"{series.psi_threshold:.3g}" if series.psi_threshold is not None else "?"
    charts = "".join(
        f'<div class="feature"><b>{esc(name)}</b><br>{psi_svg(name, points, series.psi_threshold, since, now)}</div>'
        for name, points in series.features.items()
    )
    names = list(series.features)
    by_window = {name: {p.window_start: p for p in points} for name, points in series.features.items()}
    header = "".join(f"<th>{esc(n)}</th>" for n in ["window start (UTC)", "rows", *names])
    rows = []
    for start, _, window_rows, window_drifted in series.windows:
        cells = []
        for name in names:
            point = by_window[name].get(start)
            if point is None or point.psi is None:
                cells.append("<td></td>")
            else:
                cls = ' class="drifted"' if point.drifted else ""
                cells.append(f"<td{cls}>{point.psi:.3g}</td>")
        cls = ' class="drifted"' if window_drifted else ""
        rows.append(f"<tr><td{cls}>{esc(minute_text(start))}</td><td>{window_rows}</td>{''.join(cells)}</tr>")
    return (
        f"<p>{len(series.windows)} windows, {drifted} drifted (PSI threshold {threshold}; red: drifted).</p>{charts}"
        f'<table class="drift"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def latency_svg(minutes: list[LatencyMinute], since: float, now: float) -> str:
    """p50, p95 and p99 latency by minute."""
    width, height, left, right, top, bottom = 720, 200, 44, 710, 20, 180
    top_value = max(m.p99_ms for m in minutes) or 1.0
    lines, legend = [], []
    for n, (label, attr) in enumerate((("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))):
        color = PALETTE[n]
        xy = [
            (_x(m.minute + 30, since, now, left, right), _y(getattr(m, attr), top_value, top, bottom)) for m in minutes
        ]
        lines.append(f'<polyline fill="none" stroke="{color}" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}"/>')
        lines.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{color}"/>' for x, y in xy)
        legend.append(f'<text x="{left + 60 * n}" y="14" font-size="11" fill="{color}">{label}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="latency by minute"><rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
        f'<text x="2" y="{top + 8}" font-size="10">{top_value:.3g} ms</text>'
        f'<text x="2" y="{bottom}" font-size="10">0</text>{"".join(legend)}{"".join(lines)}</svg>'
    )


def latency_section(minutes: list[LatencyMinute], since: float, now: float) -> str:
    requests = sum(m.requests for m in minutes)
    errors = sum(m.errors for m in minutes)
    classes = sorted({c for m in minutes for c in m.by_status_class})
    header = "".join(f"<th>{esc(h)}</th>" for h in ["minute (UTC)", "requests", "p50 ms", "p95 ms", "p99 ms", *classes])
    shown = minutes[::-1][:TABLE_MINUTES]
    rows = "".join(
        f"<tr><td>{esc(minute_text(m.minute))}</td><td>{m.requests}</td><td>{m.p50_ms:.4g}</td>"
        f"<td>{m.p95_ms:.4g}</td><td>{m.p99_ms:.4g}</td>"
        + "".join(f"<td>{m.by_status_class.get(c, 0)}</td>" for c in classes)
        + "</tr>"
        for m in shown
    )
    older = (
        f" (the newest {TABLE_MINUTES} minutes; the chart has all {len(minutes)})" if len(minutes) > len(shown) else ""
    )
    return (
        f"<p>{requests} requests in {len(minutes)} minutes, {errors} answered 4xx/5xx{older}.</p>"
        f"{latency_svg(minutes, since, now)}"
        f'<table class="latency"><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>'
    )


def read_notes(read: TopicRead, cap: int) -> list[str]:
    """What the page must say about how a topic was read: unreadable, malformed messages, the cap, the deadline."""
    topic = f"<code>{esc(read.topic)}</code>"
    notes = []
    if read.error:
        notes.append(f"{topic} could not be read: {esc(read.error)}")
    if read.malformed:
        notes.append(f"{topic}: {read.malformed} malformed messages skipped")
    if read.skipped:
        notes.append(
            f"{topic}: more than {cap} messages in the period; the {read.skipped} oldest were not read (the cap cut "
            "the data: choose fewer hours)"
        )
    if read.timed_out:
        notes.append(f"{topic}: the reading's deadline came first: the newest messages may be missing")
    return notes


def render_page(
    *,
    model: str | None,
    hours: int,
    now: float,
    models: list[str],
    drift: dict[ModelVersion, DriftSeries],
    latency: dict[ModelVersion, list[LatencyMinute]],
    reads: list[tuple[TopicRead, int]],
) -> str:
    """The whole page: the model choice, notes on the reading, then per model version its drift and latency."""
    since = now - hours * 3600
    title = "Model monitoring" + (f": {model}" if model else "")
    links = " · ".join(
        f'<a href="?{esc(urlencode({"model": name, "hours": hours}))}">{esc(name)}</a>' for name in models
    )
    options = "".join(
        f'<option value="{esc(name)}"{" selected" if name == model else ""}>{esc(name)}</option>' for name in models
    )
    form = (
        f'<form method="get"><label>model <select name="model"><option value="">all</option>{options}</select></label> '
        f'<label>hours <input name="hours" type="number" min="1" max="48" value="{hours}"></label> '
        f'<button type="submit">show</button></form><p>Models: {links or "none seen"}</p>'
    )
    notes = "".join(f'<p class="note">{note}</p>' for read, cap in reads for note in read_notes(read, cap))
    body = []
    for name in [model] if model else models:
        body.append(f"<h2>{esc(name)}</h2>")
        versions = sorted({v for n, v in [*drift, *latency] if n == name}, key=lambda v: version_order((name, v)))
        if not versions:
            body.append("<p>Nothing from this model in the period.</p>")
        for version in versions:
            body.append(f"<h3>version {esc(version)}</h3><h4>Drift</h4>")
            series = drift.get((name, version))
            body.append(drift_section(series, since, now) if series else "<p>No drift windows in the period.</p>")
            body.append("<h4>Serving latency</h4>")
            minutes = latency.get((name, version))
            body.append(latency_section(minutes, since, now) if minutes else "<p>No requests in the period.</p>")
    if not models and not model:
        body.append("<p>No drift windows and no serving requests in the period: the topics are empty.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style>
</head><body><h1>{esc(title)}</h1>
<p>The last {hours} h: {esc(minute_text(since))} to {esc(minute_text(now))} UTC, from the topics
<code>{esc(DRIFT.name)}</code> (the drift monitor's windows) and <code>{esc(SERVING_METRICS.name)}</code> (every
request).</p>
{form}{notes}{"".join(body)}</body></html>"""
