"""Self-contained HTML reports: one run (``write_report``, with the section of its robustness
record when it has one: ``robustness_section``) and several runs side by side
(``write_comparison``).

Each page is a single file: the figures are embedded as base64 PNG data URIs and the style
sheet is inline, so a report can be mailed, archived or opened offline, and it needs no
JavaScript. Every piece of text that comes from a run (names, configuration values) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.errors import CifarlabError, one_line, printable
from cifarlab.evaluate.metrics import classification_report_text
from cifarlab.evaluate.stats import MAX_RUNS, p_text
from cifarlab.files import atomic_write, read_input
from cifarlab.limits import MAX_RUN_FILE, megabytes
from cifarlab.report import plots
from cifarlab.report.compare import (
    METRICS,
    Comparison,
    Side,
    ci_text,
    dot_panels,
    ece_note,
    mean_text,
    runs_comparison,
)
from cifarlab.runs import RunFolder

_COLUMN_PX = 1180  # the page's text column (body max-width below)
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #59636e; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 0.6em 1em; min-width: 8.5em; }
.card .v { font-size: 1.5em; font-weight: 600; }
.card .k { color: #59636e; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #8c959f; }
tfoot td { font-weight: 600; }
tfoot tr:first-child td { border-top: 2px solid #8c959f; }
tr.best td { background: #e6f4ea; }
table.kv td:last-child { text-align: left; max-width: 60em; overflow-wrap: anywhere; }
.fig { overflow-x: auto; margin: 0.5em 0; }
.fig img { max-width: 100%; height: auto; display: block; }
/* Figures wider than the column (100 classes, image grids) stay at full size, as their labels
   are small: as wide as the window, breaking out of the column, scrolling sideways if need be. */
html { overflow-x: hidden; }
.fig.wide { width: 100vw; position: relative; left: 50%; margin-left: -50vw; }
.fig.wide img { max-width: none; margin: 0 auto; }
.note { color: #59636e; font-size: 0.9em; }
.verdict { font-size: 1.1em; background: #f6f8fa; padding: 0.6em 1em; border-radius: 8px; }
table.nowrap td:not(:first-child):not(.text) { white-space: nowrap; }
td.text { text-align: left; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _esc(value: Any) -> str:
    """User text (class, run, file, model names, configuration values) as HTML text: every
    markup character escaped, and bytes that were not UTF-8 in a file name (Python's lone
    surrogates, which no UTF-8 page can hold) shown as ``\\xff``."""
    return html.escape(printable(value), quote=True)


def _finite(x: Any) -> bool:
    """A number that can be shown (not None, a string, a bool, NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "–"


def _num(x: float | None, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "–"


def _count(n: Any) -> str:
    return f"{int(n):,}" if _finite(n) else "–"


def _duration(seconds: Any) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min; '–' when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _img(png: bytes, alt: str) -> str:
    """An embedded PNG; one wider than the text column is shown at full size (see .wide)."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    wide = int.from_bytes(png[16:20], "big") > _COLUMN_PX  # the width field of the IHDR chunk
    return f'<div class="fig{" wide" if wide else ""}"><img src="{uri}" alt="{_esc(alt)}"></div>'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _write_text(path: Path, text: str) -> Path:
    # backslashreplace: a lone surrogate that reached the page unescaped cannot stop it
    data = text.encode("utf-8", "backslashreplace")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _cards(items: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="card"><div class="v">{_esc(v)}</div><div class="k">{_esc(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{cells}</div>'


def _config_value(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return f"{len(value)}: " + ", ".join(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# Measurement records kept in config.json, shown in prose above the table, not in it.
_NOT_IN_TABLE = ("budget_plan", "precision_choice", "budget_replans")


def _config_table(config: dict) -> str:
    rows = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(_config_value(v))}</td></tr>"
        for k, v in config.items()
        if k not in _NOT_IN_TABLE
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _report_table(metrics: dict) -> str:
    """The classification report as a table, F1 drawn as a bar behind the number."""

    def f1_cell(f1: float) -> str:
        bar = f"background: linear-gradient(90deg, #cfe3f7 {100 * f1:.0f}%, transparent 0)"
        return f'<td style="{bar}">{f1:.2f}</td>'

    head = (
        "<thead><tr><th>class</th><th>precision</th><th>recall</th><th>f1-score</th>"
        "<th>support</th><th>predicted</th></tr></thead>"
    )
    rows = []
    for row, predicted in zip(metrics["per_class"], metrics["predicted_counts"], strict=True):
        rows.append(
            f"<tr><td>{_esc(row['class'])}</td><td>{row['precision']:.2f}</td>"
            f"<td>{row['recall']:.2f}</td>{f1_cell(row['f1'])}<td>{row['support']:,}</td>"
            f"<td>{predicted:,}</td></tr>"
        )
    n = metrics["num_samples"]
    foot = [
        f"<tr><td>accuracy</td><td></td><td></td><td>{metrics['accuracy']:.2f}</td>"
        f"<td>{n:,}</td><td></td></tr>"
    ]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        a = metrics[key]
        foot.append(
            f"<tr><td>{label}</td><td>{a['precision']:.2f}</td><td>{a['recall']:.2f}</td>"
            f"<td>{a['f1']:.2f}</td><td>{a['support']:,}</td><td></td></tr>"
        )
    return (
        f'<table class="report">{head}<tbody>{"".join(rows)}</tbody>'
        f"<tfoot>{''.join(foot)}</tfoot></table>"
    )


def _section(sid: str, heading: str, content: str) -> str:
    return f'<section id="{sid}">\n<h2>{_esc(heading)}</h2>\n{content}\n</section>\n'


def _dataset_label(config: dict) -> str:
    dataset = str(config.get("dataset", "?"))
    labels = config.get("labels")
    return f"{dataset} ({labels} labels)" if labels and dataset != "cifar10" else dataset


def _saved_labels(run_dir: Path, metrics: dict) -> np.ndarray:
    """The true labels from ``predictions_<split>.npz`` (written by ``evaluate_run``)."""
    folder = RunFolder(run_dir)
    split = metrics.get("split", "test")
    path = folder.predictions_path(split)
    labels = folder.read_prediction_labels(split)
    counts = np.bincount(labels, minlength=len(metrics["class_names"])).tolist()
    if len(labels) != metrics["num_samples"] or counts != metrics["true_counts"]:
        raise ValueError(f"{path} does not hold the labels these metrics were computed from")
    return labels


def _checked(
    run_dir: Path, metrics: dict, images: np.ndarray, probs: np.ndarray, labels: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The true labels (``None``: from ``predictions_<split>.npz``) and predicted classes,
    checked against the metrics they must have produced."""
    if labels is None:
        labels = _saved_labels(run_dir, metrics)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    names = metrics["class_names"]
    n = metrics["num_samples"]
    if not (len(images) == len(probs) == len(labels) == n) or probs.shape[1] != len(names):
        raise ValueError(
            f"images ({len(images)}), probabilities {probs.shape} and labels ({len(labels)}) "
            f"must match the metrics ({n} samples, {len(names)} classes)"
        )
    if np.bincount(labels, minlength=len(names)).tolist() != metrics["true_counts"]:
        raise ValueError("these labels are not the ones the metrics were computed from")
    preds = probs.argmax(axis=1)
    if np.bincount(preds, minlength=len(names)).tolist() != metrics["predicted_counts"]:
        raise ValueError("these probabilities are not the ones the metrics were computed from")
    return labels, preds


def _figures(
    history: list[dict],
    metrics: dict,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray,
) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """The report's figures as (file, section id, heading, how to draw it): drawn, saved and
    closed one by one."""
    names = metrics["class_names"]
    top_prob = probs[np.arange(len(probs)), preds]
    figures = [
        ("training_curves.png", "curves", "Training curves",
         lambda: plots.training_curves(history)),
        ("confusion_matrix.png", "confusion", "Confusion matrix",
         lambda: plots.confusion_heatmap(metrics)),
        ("predicted_vs_true.png", "counts", "Predicted vs true class counts",
         lambda: plots.predicted_vs_true(metrics)),
        ("predictions.png", "predictions", "Sample predictions",
         lambda: plots.prediction_grid(images, labels, preds, top_prob, names)),
        ("mistakes.png", "mistakes", "Most confident mistakes",
         lambda: plots.confident_mistakes(images, labels, preds, top_prob, names)),
    ]  # fmt: skip
    calibration = metrics.get("calibration")
    if calibration:
        figures += [
            ("reliability.png", "reliability", "Reliability diagram",
             lambda: plots.reliability_diagram(calibration)),
            ("confidence.png", "confidence", "Confidence of right and wrong answers",
             lambda: plots.confidence_histogram(labels, probs, calibration.get("temperature"))),
        ]  # fmt: skip
    return figures


def _headline_cards(config: dict, metrics: dict) -> str:
    tta = metrics.get("tta") or 0
    without = ("accuracy without test-time augmentation", _pct(metrics.get("accuracy_without_tta")))
    return _cards(
        [
            (f"accuracy{' (test-time augmentation)' if tta else ''}", _pct(metrics["accuracy"])),
            *([without] if tta else []),
            ("top-5 accuracy", _pct(metrics.get("top5_accuracy"))),
            ("log-loss", _num(metrics["log_loss"])),
            ("macro F1", _num(metrics["macro_avg"]["f1"])),
            ("parameters", _count(config.get("params"))),
            ("training time", _duration(config.get("train_seconds"))),
        ]
    )


def write_report(
    run_dir: str | Path,
    config: dict,
    history: list[dict],
    metrics: dict,
    images: np.ndarray,
    preds_probs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
) -> Path:
    """Write the figures of one evaluated run as PNGs and ``run_dir/report.html`` (for the
    test split; another split's report is ``report_<split>.html`` and its PNGs are prefixed
    ``<split>_``, so that evaluating on val never overwrites the test report).

    ``images`` (N×32×32×3 uint8), ``preds_probs`` (N×C) and ``labels`` (N) are the evaluated
    split, in the order that produced ``metrics``. The metrics hold no per-image labels, so
    without ``labels`` they are read from ``run_dir/predictions_<split>.npz`` (checked against
    the metrics' class counts). Returns the path of report.html.
    """
    run_dir = Path(run_dir)
    probs = np.asarray(preds_probs)
    labels, preds = _checked(run_dir, metrics, images, probs, labels)
    split = metrics.get("split", "test")
    folder = RunFolder(run_dir)
    embedded = {}
    for filename, sid, heading, draw in _figures(history, metrics, images, labels, probs, preds):
        path = plots.save_png(draw(), folder.figure_path(split, filename))
        embedded[sid] = _img(path.read_bytes(), heading)

    recipe = f" (recipe {config['recipe']})" if config.get("recipe") else ""
    title = f"{config.get('model', '?')}{recipe} on {_dataset_label(config)}: {split} split"
    report_text = classification_report_text(metrics)
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">run folder {_esc(run_dir.name)}, {metrics["num_samples"]:,} '
        f"{_esc(split)} images, {len(metrics['class_names'])} classes, {len(history)} epochs "
        "recorded</p>",
        _trained_on(config),
        _section("summary", "Headline numbers", _headline_cards(config, metrics)),
        _section("config", "Configuration", _config_table(config)),
        _section("curves", "Training curves", embedded["curves"]),
        _section(
            "classification-report",
            "Classification report",
            _report_table(metrics) + "<details><summary>as text (scikit-learn layout)</summary>"
            f"<pre>{_esc(report_text)}</pre></details>",
        ),
        _section("confusion", "Confusion matrix", embedded["confusion"]),
        _section("counts", "Predicted vs true class counts", embedded["counts"]),
        _section("predictions", "Sample predictions", embedded["predictions"]),
        _section("mistakes", "Most confident mistakes", embedded["mistakes"]),
    ]
    calibration = metrics.get("calibration")
    if calibration:
        figures = embedded["reliability"] + embedded["confidence"]
        html_text = _calibration_html(calibration, split) + figures
        body.append(_section("calibration", "Calibration", html_text))
    if split == "test":
        section = robustness_section(run_dir)
        if section:
            body.append(section)
    return _write_text(folder.report_path(split), _page(title, "\n".join(body)))


# --------------------------------------------------------------------------- robustness

ROBUSTNESS_HEADING = "Robustness to corruptions"
# The published mean corruption errors on CIFAR-10-C, standard training and AugMix.
PUBLISHED_ERROR = {
    "WRN-40-2": 0.269,
    "ResNeXt-29": 0.275,
    "DenseNet": 0.307,
    "AugMix WRN-40-2": 0.112,
}
SOURCES = (
    "Sources: Hendrycks & Dietterich, ICLR 2019 (CIFAR-10-C); Hendrycks et al., ICLR "
    "2020 (AugMix), Table 1."
)


def published_text() -> str:
    """The published mean corruption errors, in words."""
    standard = ", ".join(f"{k} {v:.1%}" for k, v in PUBLISHED_ERROR.items() if "AugMix" not in k)
    augmix = PUBLISHED_ERROR["AugMix WRN-40-2"]
    return (
        f"Published on CIFAR-10-C with standard training: {standard}; with AugMix, WRN-40-2 "
        f"{augmix:.1%}"
    )


def _pretty(name: Any) -> str:
    return str(name).replace("_", " ")


def _png(path: Path) -> bytes | None:
    """A figure of the run folder, if it is there and a PNG."""
    if not os.path.lexists(path):
        return None
    try:
        data = read_input(path, megabytes(MAX_RUN_FILE))
    except CifarlabError:
        return None
    return data if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 24 else None


def _robustness_sub(r: dict[str, Any]) -> str:
    """What was evaluated: scope, corruptions × severities, checkpoint, seed, version."""
    per, levels = r["per_corruption"], r["severities"]
    epoch = r.get("checkpoint_epoch")
    at_epoch = f" (epoch {_esc(epoch)})" if epoch is not None else ""
    trained = r.get("trained_with")
    trained_with = f"; trained with {_esc(trained)}" if isinstance(trained, str) else ""
    return (
        f'<p class="sub">{_esc(plots.scope(r))}; {len(per)} corruptions × {len(levels)} '
        f"severities ({_esc(', '.join(map(str, levels)))}); {_esc(r.get('checkpoint', '?'))} "
        f"checkpoint{at_epoch}; corrupted with seed {_esc(r.get('seed', '?'))}, corruptions "
        f"version {_esc(r.get('corruptions_version', '?'))}{trained_with}</p>"
    )


def _robustness_reference(r: dict[str, Any]) -> str:
    """The mean corruption error beside the published ones, and whether they compare."""
    if r.get("comparable"):
        compare = (
            "Every corruption and severity on the whole test set, without test-time "
            "augmentation: the published protocol (our corruptions differ where noted below)."
        )
    else:
        compare = (
            "Not the published protocol (all 15 corruptions × 5 severities on the whole test "
            "set, no test-time augmentation): compare with care."
        )
    return (
        f"<p>Mean corruption error here: <b>{_pct(r['mean_corruption_error'])}</b>. "
        f"{_esc(published_text())}. {_esc(compare)}</p>"
        f'<p class="note">{_esc(SOURCES)}</p>'
    )


def _worst_table(r: dict[str, Any]) -> str:
    """The worst corruptions: family, mean and each severity's accuracy."""
    per, levels = r["per_corruption"], r["severities"]
    head = "".join(f"<th>{_esc(s)}</th>" for s in levels)
    rows = "".join(
        f"<tr><td>{_esc(_pretty(n))}</td><td>{_esc(per[n]['family'])}</td>"
        f"<td>{_pct(per[n]['mean_accuracy'])}</td>"
        + "".join(f"<td>{_pct(per[n]['accuracy_by_severity'][str(s)])}</td>" for s in levels)
        + "</tr>"
        for n in r["worst"]
    )
    return (
        f"<h3>The {len(r['worst'])} worst corruptions</h3><table><thead><tr><th>corruption"
        f"</th><th>family</th><th>mean</th>{head}</tr></thead><tbody>{rows}</tbody>"
        "</table>"
    )


def _family_table(r: dict[str, Any]) -> str:
    """Mean accuracy per family ("" when the record has no readable family means)."""
    fams = r.get("per_family") if isinstance(r.get("per_family"), dict) else {}
    left = ' style="text-align: left"'
    rows = "".join(
        f"<tr><td>{_esc(f)}</td><td>{_pct(v.get('mean_accuracy'))}</td><td{left}>"
        f"{_esc(', '.join(_pretty(n) for n in v['corruptions']))}</td></tr>"
        for f, v in fams.items()
        if isinstance(v, dict) and isinstance(v.get("corruptions"), list)
    )
    if not rows:
        return ""
    return (
        f"<h3>By family</h3><table><thead><tr><th>family</th><th>mean accuracy</th>"
        f"<th{left}>corruptions</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _robustness_figures(folder: RunFolder) -> str:
    """The heat-map and the examples, those that are there."""
    figures = ""
    for what, alt in (
        ("heatmap", "accuracy per corruption and severity"),
        ("examples", "example images under each corruption"),
    ):
        png = _png(folder.robustness_figure_path(what))
        if png is not None:
            figures += _img(png, alt)
    return figures


def _corruption_notes(r: dict[str, Any]) -> str:
    """Where our corruptions differ from CIFAR-10-C's ("" when none of them does)."""
    per = r["per_corruption"]
    notes = [(n, per[n]["note"]) for n in r["corruptions"] if per[n].get("note")]
    if not notes:
        return ""
    items = "".join(f"<li><b>{_esc(_pretty(n))}</b>: {_esc(t)}</li>" for n, t in notes)
    return f"<h3>Where these corruptions differ from CIFAR-10-C</h3><ul>{items}</ul>"


def robustness_section(run_dir: str | os.PathLike) -> str | None:
    """The report's robustness section (a ``<section id="robustness">``): headline numbers,
    the five worst corruptions, the family means, the figures, where our corruptions differ,
    and the published numbers; None if the run has no robustness record. A record that cannot
    be read gives a section saying so (the rest of the report is still written)."""
    folder = RunFolder(run_dir)
    try:
        r = folder.read_robustness()
    except CifarlabError as e:
        note = f'<p class="note">{_esc(one_line(e))}; run cifarlab robustness again</p>'
        return _section("robustness", ROBUSTNESS_HEADING, note)
    if r is None:
        return None
    cards = _cards(
        [
            ("clean accuracy", _pct(r["clean_accuracy"])),
            ("mean accuracy under corruption", _pct(r["mean_corruption_accuracy"])),
            ("relative drop", _pct(r.get("relative_drop"))),
            ("mean corruption error", _pct(r["mean_corruption_error"])),
        ]
    )
    parts = [
        _robustness_sub(r),
        cards,
        _robustness_reference(r),
        _worst_table(r),
        _family_table(r),
        _robustness_figures(folder),
        _corruption_notes(r),
    ]
    return _section("robustness", ROBUSTNESS_HEADING, "\n".join(parts))


def _calibration_html(c: dict, split: str) -> str:
    """The calibration table: ECE, MCE, Brier score, NLL, mean confidence, before and after."""
    rows = [("as trained", c["before"])]
    if c.get("after") is not None:
        rows.append((f"temperature scaling, T = {c['temperature']:.3f}", c["after"]))
    head = (
        "<tr><th></th><th>ECE</th><th>MCE</th><th>Brier</th><th>NLL</th>"
        "<th>mean confidence</th></tr>"
    )
    cells = "".join(
        f"<tr><td>{_esc(name)}</td><td>{_pct(m['ece'])}</td><td>{_pct(m['mce'])}</td>"
        f"<td>{_num(m['brier'], 4)}</td><td>{_num(m['nll'], 4)}</td>"
        f"<td>{_pct(m['mean_confidence'])}</td></tr>"
        for name, m in rows
    )
    notes = [_esc(c.get("note", ""))]
    if split == "val" and c.get("after") is not None:
        notes.append(
            "The temperature was fitted on this split: these numbers after scaling are in-sample."
        )
    notes.append(
        "ECE: expected calibration error over 15 equal-width confidence bins "
        "(Guo et al., ICML 2017); MCE: the largest bin's gap; Brier: mean squared "
        "error of the probability vector; NLL: mean negative log-likelihood. "
        "Temperature scaling divides the logits by one number fitted on the "
        "validation split: the predicted classes, and so the accuracy, are "
        "unchanged."
    )
    return f"<table>{head}{cells}</table>" + "".join(f'<p class="sub">{n}</p>' for n in notes if n)


def _verdict(rows: list[dict]) -> str:
    """One sentence: the best run by accuracy and its lead over the runner-up."""
    ranked = sorted(rows, key=lambda r: r["accuracy"], reverse=True)
    best = ranked[0]
    split = best["split"]
    if len(ranked) == 1:
        return f"Only one run: {best['name']} with {_pct(best['accuracy'])} {split} accuracy."
    second = ranked[1]
    lead = 100 * (best["accuracy"] - second["accuracy"])
    if lead == 0:
        return (
            f"{best['name']} and {second['name']} tie for best with "
            f"{_pct(best['accuracy'])} {split} accuracy."
        )
    return (
        f"Best: {best['name']} with {_pct(best['accuracy'])} {split} accuracy, "
        f"{lead:.1f} points above {second['name']} ({_pct(second['accuracy'])})."
    )


def write_comparison(
    out: str | Path, runs: list[tuple[str, dict, dict, list[dict]]] | Comparison
) -> Path:
    """Write one page comparing runs given as (name, config, metrics, history), or a
    :class:`cifarlab.report.compare.Comparison` of runs and groups of runs (a group: its
    statistics, every run's numbers, the pairs' differences with their verdicts, and each run
    as a dot beside its side's mean and 95 % interval).

    ``out`` is the HTML file to write (``comparison.html`` inside it if it is a directory).
    """
    comparison = runs if isinstance(runs, Comparison) else runs_comparison(runs)
    out = Path(out)
    if out.is_dir():
        out = out / "comparison.html"
    grouped = comparison.grouped
    members = comparison.members()
    rows = [
        {
            "name": name,
            "model": m.config.get("model", "?"),
            "dataset": _dataset_label(m.config),
            "split": m.metrics.get("split", "test"),
            "params": m.config.get("params"),
            "accuracy": m.metrics["accuracy"],
            "macro_f1": m.metrics["macro_avg"]["f1"],
            "log_loss": m.values["log_loss"],
            "ece": m.values["ece"],
            "train_seconds": m.config.get("train_seconds"),
            "epochs": len(m.history) or m.config.get("epochs"),
        }
        for name, m in members
    ]
    best = max(rows, key=lambda r: r["accuracy"])
    table_rows = "".join(
        f"<tr{' class=best' if r is best and not grouped else ''}><td>{_esc(r['name'])}</td>"
        f"<td>{_esc(r['model'])}</td><td>{_esc(r['dataset'])}</td><td>{_count(r['params'])}</td>"
        f"<td>{_pct(r['accuracy'])}</td><td>{_num(r['macro_f1'])}</td>"
        f"<td>{_num(r['log_loss'])}</td><td>{_pct(r['ece'])}</td>"
        f"<td>{_duration(r['train_seconds'])}</td><td>{_esc(r['epochs'] or '–')}</td></tr>"
        for r in rows
    )
    table = (
        "<table><thead><tr><th>run</th><th>model</th><th>dataset</th><th>params</th>"
        f"<th>{_esc(best['split'])} accuracy</th><th>macro F1</th><th>log-loss</th><th>ECE</th>"
        f"<th>train time</th><th>epochs</th></tr></thead><tbody>{table_rows}</tbody></table>"
        f'<p class="note">{_esc(ece_note([m for _, m in members]))}.</p>'
    )
    notes = ""
    if len({(r["dataset"], r["split"]) for r in rows}) > 1:
        notes = '<p class="note">Caution: these runs were evaluated on different data.</p>'

    sides = comparison.sides
    names = members[0][1].metrics["class_names"]
    if all(m.metrics["class_names"] == names for _, m in members):
        fig = plots.f1_bars([_mean_f1(side) for side in sides] if grouped else
                            [(name, m.metrics) for name, m in members])  # fmt: skip
        f1 = _img(plots.png_bytes(fig), "Per-class F1 by run")
    else:
        f1 = '<p class="note">The runs have different classes; no per-class comparison.</p>'
    if grouped:
        fig = plots.val_accuracy_sides([(s.name, [m.history for m in s.members]) for s in sides])
    else:
        fig = plots.val_accuracy_overlay([(name, m.history) for name, m in members])
    curves = _img(plots.png_bytes(fig), "Validation accuracy by epoch")
    count = f"{len(members)} runs"
    if grouped:
        groups = sum(s.group for s in sides)
        singles = len(sides) - groups
        count = f"{groups} group{'s' * (groups != 1)}" + (
            f" and {singles} run{'s' * (singles != 1)}" if singles else ""
        )
        count += f" ({len(members)} runs)"
        verdicts = "".join(
            f'<p class="verdict">{_esc(p.verdict("accuracy"))}</p>' for p in comparison.pairs
        )
    else:
        verdicts = f'<p class="verdict">{_esc(_verdict(rows))}</p>'
    title = f"Comparison of {count}"
    body = "\n".join(
        [
            f"<h1>{_esc(title)}</h1>",
            verdicts,
            _section("stats", "Seed statistics", _stats_html(comparison)) if grouped else "",
            _section("runs", "Runs", table + notes),
            _section("f1", "Per-class F1" + (" (each side's mean)" if grouped else ""), f1),
            _section("curves", "Validation accuracy", curves),
        ]
    )
    return _write_text(out, _page(title, body))


def _mean_f1(side: Side) -> tuple[str, dict]:
    """A side's per-class F1 for the bar chart: its runs' mean (a run's own for one run)."""
    ms = [m.metrics for m in side.members]
    per_class = [{"f1": float(np.mean(f1))} for f1 in zip(*([r["f1"] for r in m["per_class"]]
                                                           for m in ms), strict=True)]  # fmt: skip
    macro = float(np.mean([m["macro_avg"]["f1"] for m in ms]))
    label = f"{side.name}, mean of {side.n} runs" if side.n > 1 else side.name
    return label, {"class_names": ms[0]["class_names"], "per_class": per_class,
                   "macro_avg": {"f1": macro}}  # fmt: skip


def _stats_html(c: Comparison) -> str:
    """The sides' summaries, the pairs' differences and the dot plot of every run."""
    body = ""
    for side in c.sides:
        seeds = ", ".join(_esc(m.name) for m in side.members) if side.group else "one run"
        for k, m in enumerate(METRICS):
            s = side.summary(m.key)
            per_run = ", ".join(_esc(m.value(v)) for v in side.values(m.key))
            first = (
                f"<td rowspan={len(METRICS)}>{_esc(side.name)}<br><span class=note>{seeds}"
                "</span></td>"
            )
            body += (
                "<tr>" + (first if k == 0 else "") + f"<td class=text>{_esc(m.label)}</td>"
                f"<td>{side.n}</td><td>{_esc(mean_text(m, s))}</td><td>{_esc(ci_text(m, s))}</td>"
                f"<td class=text>{per_run}</td></tr>"
            )
    sides = (
        "<table><thead><tr><th>side</th><th>metric</th><th>runs</th><th>mean ± sd</th>"
        "<th>95 % CI of the mean</th><th>each run</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        '<p class="note">The 95 % CI is the t-interval of the mean (none for a single run: one '
        "run says nothing of seed noise). Every run's other numbers are in the table of runs "
        "below.</p>"
    )
    pair_rows = ""
    for p in c.pairs:
        for k, m in enumerate(METRICS):
            d = p.differences.get(m.key)
            first = f"<td rowspan={len(METRICS)}>{_esc(p.b.name)} − {_esc(p.a.name)}</td>"
            pair_rows += "<tr>" + (first if k == 0 else "") + f"<td class=text>{_esc(m.label)}</td>"
            if d is None:
                pair_rows += "<td>–</td>" * 6 + "</tr>"
                continue
            diff = f"{m.signed(d.diff)} {m.unit}".rstrip()
            ci = f"{m.signed(d.ci[0])} to {m.signed(d.ci[1])}" if d.ci else "–"
            said = (
                "not tested" if d.ci is None
                else "distinguishable" if d.distinguishable else "not distinguishable"
            )  # fmt: skip
            needed = d.runs_needed
            need = (
                "–" if needed is None else "never (equal means)" if math.isinf(needed)
                else f"> {MAX_RUNS:,}" if needed > MAX_RUNS else f"{int(needed)}"
            )  # fmt: skip
            if needed is not None and d.noise_from in ("a", "b"):
                need += " (if both sides are as noisy)"
            test = d.test if d.ci else "none"
            pair_rows += (
                f"<td>{_esc(diff)}</td><td>{_esc(ci)}</td><td>{_esc(test)}</td>"
                f"<td>{_esc(p_text(d.p))}</td><td>{_esc(said)}</td><td>{_esc(need)}</td></tr>"
            )
    pairs = (
        "<table class=nowrap><thead><tr><th>pair</th><th>metric</th><th>difference</th>"
        "<th>95 % CI</th>"
        "<th>test</th><th>p</th><th>seed noise?</th><th>runs per side for 80 % power</th>"
        f"</tr></thead><tbody>{pair_rows}</tbody></table>"
        '<p class="note">A difference is distinguishable from seed noise when its 95 % '
        "interval excludes 0 (p &lt; 0.05). The runs needed per side detect a true difference "
        "of the observed size with 80 % power at α = 0.05 (from the pooled sd of one run); "
        "the observed difference is itself noisy, so take it as a rough size."
        + (
            f" With {len(c.pairs)} pairs, about 1 in 20 pairs without a true difference looks "
            "distinguishable by chance."
            if len(c.pairs) > 1
            else ""
        )
        + "</p>"
    )
    dots = _img(plots.png_bytes(plots.seed_dots(dot_panels(c))), "Every run as a dot, by side")
    return sides + dots + "<h3>Differences</h3>" + pairs


def _trained_on(config: dict) -> str:
    """Where and how the run was trained: the machine, the precision, and for a --budget run
    what the budget chose and why."""
    parts = []
    if config.get("machine"):
        precision = config.get("precision_used") or config.get("precision")
        parts.append(f"trained on {config['machine']}, in {precision}")
    plan = config.get("budget_plan")
    if isinstance(plan, dict) and plan.get("reason"):
        used = config.get("budget_used_seconds")
        used_text = f" (used {_duration(used)})" if isinstance(used, int | float) else ""
        parts.append(f"chosen for a time budget{used_text}: {plan['reason']}")
    return "".join(f'<p class="sub">{_esc(p)}</p>' for p in parts)
