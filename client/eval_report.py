"""An evaluation's outputs: the text summary, the JSON report (schema imgsim-eval/1, docs/eval.md), a
self-contained HTML page (inline SVG and images, nothing fetched), and the side-by-side of two runs with a
bootstrap confidence interval."""

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from client.evaluation import SCHEMA, EvalReport

BOOTSTRAP_SAMPLES = 2000


def column_names(k: int) -> list[str]:
    return ["kind", f"P@{k}", f"R@{k}", f"mAP@{k}", "MRR", "vs exact", "p50 ms", "p95 ms", "p99 ms"]


def summary_cells(result) -> list[str]:
    """One kind's row of the summary, formatted once for the text, HTML and PNG reports."""
    o, lat = result.overall, result.latency_ms
    return [result.kind, *(f"{v:.4f}" for v in (o.precision_at_k, o.recall_at_k, o.map_at_k, o.mrr,
                                                  result.recall_vs_exact)),
            *(f"{lat[p]:.2f}" for p in ("p50", "p95", "p99"))]


def summary_table(report: EvalReport) -> list[str]:
    widths = [6, 8, 8, 8, 8, 9, 8, 8, 8]

    def line(cells):
        return " ".join([f"{cells[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:])])
    return [line(column_names(report.k))] + [line(summary_cells(result)) for result in report.kinds]


def text_summary(report: EvalReport, samples: list[str] | None = None) -> str:
    k = report.k
    lines = [f"model {report.model['model_id']} (fingerprint {report.model['fingerprint']}), k={k}",
             f"{report.query_count} queries from {report.queries}, {report.candidate_count} candidates from "
             f"{report.candidates}; embedding {report.embedding_images_per_s:.1f} images/s"
             + (f"; {len(report.failed_images)} images failed" if report.failed_images else "")]
    if samples:
        lines += ["", *samples]
    lines += ["", *summary_table(report)]
    first = report.kinds[0]
    lines += ["", f"per class ({first.kind}): label, queries, P@{k}, R@{k}, mAP@{k}, MRR"]
    for label, m in first.per_class.items():
        lines.append(f"  {label:<16} {m.queries:>6} {m.precision_at_k:>8.4f} {m.recall_at_k:>8.4f} "
                     f"{m.map_at_k:>8.4f} {m.mrr:>8.4f}")
    return "\n".join(lines)


def finite_or_null(value):
    """Strict JSON: NaN (a metric with nothing to average) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(v) for key, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value


def write_json(report: EvalReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_or_null(report.to_dict()), indent=1, allow_nan=False))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable evaluation report ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an {SCHEMA} report (schema {data.get('schema') if isinstance(data, dict) else None!r})")
    return data


# Comparing two runs.

def bootstrap_difference(mine: dict[str, float], theirs: dict[str, float], seed: int = 0) -> tuple[float, float, bool]:
    """95% interval of mean(mine) - mean(theirs) by bootstrap; paired over the queries both runs share
    (same ids), else each run resampled on its own. Returns (low, high, paired)."""
    rng = np.random.default_rng(seed)
    shared = sorted(set(mine) & set(theirs))
    if len(shared) >= max(10, 0.9 * min(len(mine), len(theirs))):
        differences = np.array([mine[q] - theirs[q] for q in shared])
        picks = rng.integers(0, len(differences), (BOOTSTRAP_SAMPLES, len(differences)))
        means = differences[picks].mean(axis=1)
        paired = True
    else:
        a, b = np.array(list(mine.values())), np.array(list(theirs.values()))
        means = (a[rng.integers(0, len(a), (BOOTSTRAP_SAMPLES, len(a)))].mean(axis=1)
                 - b[rng.integers(0, len(b), (BOOTSTRAP_SAMPLES, len(b)))].mean(axis=1))
        paired = False
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high), paired


def number(value) -> float:
    return float("nan") if value is None else float(value)


def compare(report: dict, against: dict) -> str:
    """Both runs side by side, kind by kind, with the differences (this run minus the other)."""
    lines = [f"this run:  {report['model']['model_id']} {report['model']['fingerprint']} k={report['k']} "
             f"({report['created']})",
             f"against:   {against['model']['model_id']} {against['model']['fingerprint']} k={against['k']} "
             f"({against['created']})"]
    if report["k"] != against["k"]:
        lines.append(f"note: k differs ({report['k']} vs {against['k']}): the metrics are not comparable")
    theirs = {kind["kind"]: kind for kind in against["kinds"]}
    k = report["k"]
    for kind in report["kinds"]:
        other = theirs.get(kind["kind"]) or (against["kinds"][0] if len(report["kinds"]) == 1 else None)
        if other is None:
            continue
        lines += ["", f"{kind['kind']} vs {other['kind']}:", f"  {'metric':<12} {'this':>8} {'against':>8} {'diff':>8}"]
        for name, label in (("precision_at_k", f"P@{k}"), ("recall_at_k", f"R@{k}"), ("map_at_k", f"mAP@{k}"),
                            ("mrr", "MRR")):
            a, b = number(kind["overall"][name]), number(other["overall"][name])
            lines.append(f"  {label:<12} {a:>8.4f} {b:>8.4f} {a - b:>+8.4f}")
        for name in ("p50", "p95", "p99"):
            a, b = number(kind["latency_ms"][name]), number(other["latency_ms"][name])
            lines.append(f"  {name + ' ms':<12} {a:>8.2f} {b:>8.2f} {a - b:>+8.2f}")
        mine = dict(zip(kind["per_query"]["ids"], kind["per_query"]["precision"]))
        their = dict(zip(other["per_query"]["ids"], other["per_query"]["precision"]))
        low, high, paired = bootstrap_difference(mine, their)
        verdict = "no difference shown" if low <= 0 <= high else ("better" if low > 0 else "worse")
        lines.append(f"  P@{k} difference, 95% bootstrap interval ({'paired over the same queries' if paired else 'unpaired'},"
                     f" {BOOTSTRAP_SAMPLES} resamples): [{low:+.4f}, {high:+.4f}]: {verdict}")
    return "\n".join(lines)


# The HTML page.

def svg_curves(result) -> str:
    width, height, pad = 360, 220, 30
    k = len(result.curve["precision"])

    def points(values):
        return " ".join(f"{pad + (width - 2 * pad) * (i / max(k - 1, 1)):.1f},"
                        f"{height - pad - (height - 2 * pad) * (0 if v is None or math.isnan(v) else v):.1f}"
                        for i, v in enumerate(values))
    return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{points(result.curve["precision"])}"/>'
            f'<polyline fill="none" stroke="#d62728" stroke-width="2" points="{points(result.curve["recall"])}"/>'
            f'<text x="{pad}" y="16" font-size="12">precision@j (blue), recall@j (red), j = 1..{k}; y 0 to 1</text>'
            f"</svg>")


def thumbnail(data: bytes | None, side: int = 96) -> str:
    if not data:
        return '<div class="missing">?</div>'
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((side, side))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
    except Exception:
        return '<div class="missing">?</div>'
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def write_html(report: EvalReport, path: Path, image_of: Callable[[str], bytes | None]) -> None:
    """`image_of(id)`: the encoded image of a query or candidate id (for the worst-queries grid)."""
    e = html.escape
    k = report.k
    parts = ["<!doctype html><meta charset='utf-8'><title>imgsim eval</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 6px;text-align:right}.grid td{text-align:center;vertical-align:top;font-size:12px}"
             ".ok{color:#070}.bad{color:#b00}</style>",
             f"<h1>Retrieval quality</h1><p>{e(text_summary(report).splitlines()[0])}<br>"
             f"{report.query_count} queries from {e(report.queries)}, {report.candidate_count} candidates from "
             f"{e(report.candidates)}; embedding {report.embedding_images_per_s:.1f} images/s.</p>",
             "<table><tr>" + "".join(f"<th>{e(name)}</th>" for name in column_names(k)) + "</tr>"]
    for result in report.kinds:
        kind, *values = summary_cells(result)
        parts.append(f"<tr><th>{e(kind)}</th>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
    parts.append("</table>")
    for result in report.kinds:
        labels = list(result.per_class)
        parts.append(f"<h2>{e(result.kind)}</h2>{svg_curves(result)}<h3>Per class</h3><table><tr><th>label</th>"
                     f"<th>queries</th><th>P@{k}</th><th>R@{k}</th><th>mAP@{k}</th><th>MRR</th></tr>")
        for label, m in result.per_class.items():
            parts.append(f"<tr><th>{e(label)}</th><td>{m.queries}</td><td>{m.precision_at_k:.4f}</td>"
                         f"<td>{m.recall_at_k:.4f}</td><td>{m.map_at_k:.4f}</td><td>{m.mrr:.4f}</td></tr>")
        tops = sorted({top for row in result.confusion.values() for top in row})
        parts.append("</table><h3>Top-1 label (columns) by query label (rows)</h3><table><tr><th></th>"
                     + "".join(f"<th>{e(t)}</th>" for t in tops) + "</tr>")
        for label in labels:
            row = result.confusion.get(label, {})
            parts.append(f"<tr><th>{e(label)}</th>" + "".join(
                f"<td class='{'ok' if t == label else 'bad' if row.get(t) else ''}'>{row.get(t, '')}</td>"
                for t in tops) + "</tr>")
        parts.append(f"</table><h3>Worst queries (lowest AP@{k})</h3><table class='grid'>")
        for query in result.worst:
            cells = [f"<td>{thumbnail(image_of(query['query']))}<br><b>query</b> {e(query['label'])}<br>"
                     f"AP {query['ap']:.3f}</td>"]
            cells += [f"<td>{thumbnail(image_of(hit['id']))}<br><span class="
                      f"'{'ok' if hit['label'] == query['label'] else 'bad'}'>{e(hit['label'])}</span><br>"
                      f"{hit['score']:.3f}</td>" for hit in query["hits"]]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


# The PNG page: the same content drawn with Pillow, for READMEs and chats where HTML does not show.

CELL = 96
GREEN, RED, GREY = (0, 120, 0), (180, 0, 0), (120, 120, 120)


def picture(data: bytes | None, side: int):
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB").resize((side, side))
    except Exception:
        return Image.new("RGB", (side, side), (230, 230, 230))


def draw_curves(draw, result, left: int, top: int, width: int = 300, height: int = 160) -> None:
    draw.rectangle([left, top, left + width, top + height], outline=GREY)
    k = len(result.curve["precision"])
    for values, colour in ((result.curve["precision"], (31, 119, 180)), (result.curve["recall"], (214, 39, 40))):
        points = [(left + width * (i / max(k - 1, 1)), top + height * (1 - (0 if v is None or math.isnan(v) else v)))
                  for i, v in enumerate(values)]
        draw.line(points, fill=colour, width=2)
    draw.text((left, top + height + 4), f"precision@j (blue), recall@j (red), j = 1..{k}; y from 0 to 1", fill="black")


def draw_confusion(draw, result, left: int, top: int, cell: int = 18) -> int:
    labels = list(result.per_class)
    tops = sorted({t for row in result.confusion.values() for t in row})
    draw.text((left, top), "top-1 label (columns) by query label (rows)", fill="black")
    top += 16
    for j, label in enumerate(tops):
        draw.text((left + 60 + j * cell, top), label[:2], fill="black")
    for i, label in enumerate(labels):
        row = result.confusion.get(label, {})
        total = max(sum(row.values()), 1)
        draw.text((left, top + 16 + i * cell), label[:8], fill="black")
        for j, other in enumerate(tops):
            share = row.get(other, 0) / total
            shade = int(255 * (1 - share))
            colour = (shade, 255, shade) if other == label else (255, shade, shade)
            draw.rectangle([left + 60 + j * cell, top + 16 + i * cell, left + 60 + (j + 1) * cell - 2,
                            top + 16 + (i + 1) * cell - 2], fill=colour)
    return top + 16 + len(labels) * cell


def write_png(report: EvalReport, path: Path, image_of: Callable[[str], bytes | None]) -> None:
    from PIL import Image, ImageDraw

    k = report.k
    first = report.kinds[0]
    columns = 1 + k
    table_height = 40 + 16 * (len(report.kinds) + 1)
    confusion_height = 40 + 18 * len(first.per_class)
    grid_top = table_height + max(200, confusion_height) + 30
    width = max(columns * CELL + 20, 760)
    height = grid_top + 24 + len(first.worst) * (CELL + 34)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    draw.text((10, 8), f"{report.model['model_id']}  k={k}  {report.query_count} queries, {report.candidate_count} "
                       f"candidates", fill="black")
    for row, line in enumerate(summary_table(report)):
        draw.text((10, 30 + 16 * row), line, fill="black")
    draw_curves(draw, first, 10, table_height + 10)
    draw_confusion(draw, first, 340, table_height + 4)
    draw.text((10, grid_top), f"worst queries ({first.kind}, lowest AP@{k}): query, then its top {k} "
                              "(green: same label)", fill="black")
    for row, query in enumerate(first.worst):
        top = grid_top + 24 + row * (CELL + 34)
        cells = [(query["query"], f"query {query['label']}", "blue")] + [
            (hit["id"], f"{hit['label']} {hit['score']:.3f}", GREEN if hit["label"] == query["label"] else RED)
            for hit in query["hits"]]
        for column, (item_id, caption, colour) in enumerate(cells):
            page.paste(picture(image_of(item_id), CELL - 8), (10 + column * CELL, top))
            draw.text((10 + column * CELL, top + CELL - 4), caption, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.save(path)
