"""What a sweep leaves in its folder: the table of trials (printed, and ``trials.csv``),
``best.toml`` (the best trial's settings, trainable as they are: ``cifarlab train --config
best.toml``) and ``sweep.html`` (self-contained, as the run reports: the optimisation history,
each trial's validation accuracy per epoch, the settings' importances and one slice per
setting, drawn with matplotlib and embedded as data URIs).

The trials come in as Optuna's ``FrozenTrial``s and are turned into plain records here
(:func:`records`); nothing else of Optuna is used, so the figures and files can be tested
and read without it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from cifarlab.files import atomic_write
from cifarlab.report import plots
from cifarlab.report.html import _cards, _duration, _esc, _img, _page, _pct, _write_text
from cifarlab.sweep.space import Param, Space

CSV_FILE = "trials.csv"
BEST_FILE = "best.toml"
HTML_FILE = "sweep.html"
FINISHED = ("complete", "pruned", "failed")
_LEFT = ' style="text-align: left"'
_COLOURS = {"complete": "#3b75af", "pruned": "#8c8c8c", "failed": plots.WRONG}


# --------------------------------------------------------------------------- records


def records(trials: list[Any]) -> list[dict[str, Any]]:
    """Optuna's trials as plain records: number, state (complete, pruned, failed,
    interrupted, lost, running, waiting), value (validation accuracy), params, the epochs'
    validation accuracies, seconds, the reason for a failure, folder and host."""
    continued_by = {
        t.user_attrs["continues"]: t.number for t in trials if "continues" in t.user_attrs
    }
    return [_record(t, continued_by) for t in sorted(trials, key=lambda t: t.number)]


def _record(t: Any, continued_by: dict[int, int]) -> dict[str, Any]:
    a = t.user_attrs
    state = t.state.name.lower()
    reason = ""
    if state == "fail":
        if "failed" in a:
            state, reason = "failed", a["failed"]
        elif "interrupted" in a:
            state, reason = "interrupted", a["interrupted"]
        else:
            state, reason = "lost", "its worker stopped (no heartbeat)"
        if t.number in continued_by:
            reason += f"; continued by trial {continued_by[t.number]}"
    elif state == "pruned":
        reason = a.get("pruned", "pruned")
    if "continues" in a:
        reason = f"continues trial {a['continues']}" + (f"; {reason}" if reason else "")
    curve = sorted((int(k), float(v)) for k, v in t.intermediate_values.items())
    value = t.value if state in ("complete", "pruned") and t.value is not None else None
    return {
        "number": t.number,
        "state": state,
        "value": value,
        "params": dict(t.params),
        "curve": curve,
        "epochs": curve[-1][0] if curve else None,
        "seconds": a.get("seconds"),
        "steps": a.get("steps"),
        "reason": reason,
        "folder": a.get("folder"),
        "host": a.get("host"),
    }


def best_record(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the best validation accuracy (the earliest of equals)."""
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    return max(done, key=lambda r: (r["value"], -r["number"])) if done else None


def fmt_value(value: Any) -> str:
    """A setting's value, short: 0.531, 1.2e-04, sgd, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {fmt_value(v)}" for k, v in params.items()) or "(no settings)"


# --------------------------------------------------------------------------- the table


def table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The trials as a text table, the best marked with ``*``."""
    best = best_record(rows)
    head = ["trial", "state", "val acc", *names, "epochs", "time", "note"]
    body = []
    for r in rows:
        mark = "*" if best is not None and r["number"] == best["number"] else " "
        body.append(
            [
                f"{r['number']}{mark}",
                r["state"],
                f"{100 * r['value']:.2f}%" if r["value"] is not None else "–",
                *(fmt_value(r["params"][n]) if n in r["params"] else "–" for n in names),
                str(r["epochs"]) if r["epochs"] is not None else "–",
                _duration(r["seconds"]),
                r["reason"],
            ]
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *body]:
        cells = [
            c.rjust(w) if i != 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join(cells) + ("  " + row[-1] if row[-1] else ""))
    return "\n".join(line.rstrip() for line in lines)


def write_csv(folder: Path, rows: list[dict[str, Any]], names: list[str]) -> Path:
    """``trials.csv``: one row per trial, one column per searched setting."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "state", "val_acc", *names, "epochs", "seconds", "note", "folder",
                     "host"])  # fmt: skip
    for r in rows:
        writer.writerow(
            [
                r["number"],
                r["state"],
                r["value"] if r["value"] is not None else "",
                *(r["params"].get(n, "") for n in names),
                r["epochs"] or "",
                f"{r['seconds']:.1f}" if r["seconds"] is not None else "",
                r["reason"],
                r["folder"] or "",
                r["host"] or "",
            ]  # fmt: skip
        )
    text = buf.getvalue()
    return atomic_write(folder / CSV_FILE, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------- best.toml


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """A setting's value in TOML: strings as JSON writes them (TOML's basic strings take
    the same escapes), numbers exactly (``repr``), tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")  # settings are checked finite
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"no TOML for {type(value).__name__}")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def best_toml(settings: dict[str, Any], header: list[str]) -> str:
    """An experiment file for ``cifarlab train --config``: ``header`` as comments, then the
    settings (TrainConfig fields; tables last, as TOML needs)."""
    lines = [f"# {line}" for line in header] + [""]
    scalars = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in scalars.items()]
    for name, table_ in tables.items():
        lines += ["", f"[{toml_key(name)}]"]
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table_.items()]
    return "\n".join(lines) + "\n"


def write_best(folder: Path, settings: dict[str, Any], header: list[str]) -> Path:
    text = best_toml(settings, header)
    return atomic_write(folder / BEST_FILE, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------- figures


@plots.plain_text
def history_figure(rows: list[dict[str, Any]]) -> Figure:
    """Each trial's validation accuracy by trial number, and the best so far."""
    fig = plots.new_figure(9, 3.6)
    ax = fig.add_subplot()
    done = [r for r in rows if r["state"] in FINISHED]
    for state, marker in (("complete", "o"), ("pruned", "o")):
        pts = [(r["number"], 100 * r["value"]) for r in done
               if r["state"] == state and r["value"] is not None]  # fmt: skip
        if pts:
            xs, ys = zip(*pts, strict=True)
            face = _COLOURS[state] if state == "complete" else "none"
            ax.scatter(xs, ys, marker=marker, s=30, facecolors=face, edgecolors=_COLOURS[state],
                       label=f"{state} ({len(pts)})", zorder=3)  # fmt: skip
    failed = [r["number"] for r in done if r["state"] == "failed"]
    if failed:
        ax.scatter(failed, [0.02] * len(failed), marker="x", color=_COLOURS["failed"],
                   transform=ax.get_xaxis_transform(), label=f"failed ({len(failed)})",
                   zorder=3, clip_on=False)  # fmt: skip
    best, xs, ys = -math.inf, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        if r["state"] == "complete" and r["value"] is not None:
            best = max(best, 100 * r["value"])
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#e8891c", lw=1.6, label="best so far", zorder=2)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Optimisation history", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.04, y=0.12)
    ax.grid(alpha=0.3)
    if done:
        ax.legend(fontsize=8, loc="best")
    return fig


@plots.plain_text
def curves_figure(rows: list[dict[str, Any]]) -> Figure:
    """Each trial's validation accuracy per epoch (what the pruner compares)."""
    fig = plots.new_figure(9, 3.6)
    ax = fig.add_subplot()
    done = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                  key=lambda r: -r["value"])  # fmt: skip
    labelled = {r["number"] for r in done[:5]} | {
        r["number"] for r in rows if r["state"] not in ("complete", "waiting", "running")
    }  # the five best and those stopped early: all the numbers would overlap
    for r in rows:
        if not r["curve"]:
            continue
        xs = [e for e, _ in r["curve"]]
        ys = [100 * v for _, v in r["curve"]]
        style = {"complete": "-", "pruned": ":"}.get(r["state"], "--")
        colour = _COLOURS.get(r["state"], "#59636e")
        ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, alpha=0.7, lw=1.2)
        if r["number"] in labelled:
            ax.annotate(str(r["number"]), (xs[-1], ys[-1]), textcoords="offset points",
                        xytext=(4, 0), fontsize=7, color=colour, va="center")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy per epoch (solid: finished, dotted: pruned)", fontsize=11)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


@plots.plain_text
def importance_figure(importances: dict[str, float]) -> Figure:
    """Each setting's share of the variation in validation accuracy, largest on top."""
    names = list(importances)[::-1]
    fig = plots.new_figure(7, 0.5 + 0.42 * max(len(names), 2))
    ax = fig.add_subplot()
    values = [importances[n] for n in names]
    ax.barh(range(len(names)), values, color="#3b75af")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([plots.safe_text(n) for n in names])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(values, default=0) * 1.15))
    ax.set_xlabel("importance (share of the variation in validation accuracy)")
    ax.set_title("Settings' importance", fontsize=11)
    return fig


@plots.plain_text
def slices_figure(rows: list[dict[str, Any]], params: list[Param]) -> Figure:
    """Validation accuracy against each searched setting (one panel each); colour: the
    trial's number (later trials darker); failed trials as red crosses along the bottom."""
    cols = min(3, len(params))
    nrows = math.ceil(len(params) / cols)
    fig = plots.new_figure(3.4 * cols + 0.8, 2.9 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    numbers = [r["number"] for r in rows] or [0]
    lo, hi = min(numbers), max(max(numbers), min(numbers) + 1)
    cmap = matplotlib.colormaps["viridis_r"]
    for ax in axes.flat[len(params) :]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, params, strict=False):
        _slice(ax, rows, p, lambda n: cmap(0.15 + 0.8 * (n - lo) / (hi - lo)))
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.suptitle("Validation accuracy by setting (colour: trial number, light to dark)",
                 fontsize=11)  # fmt: skip
    return fig


def _slice(ax: Any, rows: list[dict[str, Any]], p: Param, colour: Any) -> None:
    def x_of(value: Any) -> float:
        return float(p.choices.index(value)) if p.kind == "choice" else float(value)

    for r in rows:
        if p.name not in r["params"] or r["state"] not in FINISHED:
            continue
        x = x_of(r["params"][p.name])
        if r["state"] == "failed" or r["value"] is None:
            ax.scatter([x], [0.02], marker="x", color=_COLOURS["failed"],
                       transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            continue
        face = colour(r["number"]) if r["state"] == "complete" else "none"
        ax.scatter([x], [100 * r["value"]], s=28, facecolors=face,
                   edgecolors=colour(r["number"]), zorder=3)  # fmt: skip
    if p.kind == "choice":
        ax.set_xticks(range(len(p.choices)))
        ax.set_xticklabels([plots.safe_text(fmt_value(c)) for c in p.choices])
        ax.set_xlim(-0.5, len(p.choices) - 0.5)
    else:
        if p.log:
            ax.set_xscale("log")
            # plain numbers (the log scale's own labels are mathtext, which the figures keep off)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        span = (float(p.high) - float(p.low)) * 0.04
        if p.log:
            ax.set_xlim(float(p.low) / 1.15, float(p.high) * 1.15)
        else:
            ax.set_xlim(float(p.low) - span, float(p.high) + span)
    ax.set_xlabel(plots.safe_text(p.name) + (" (log scale)" if p.log else ""))
    ax.margins(y=0.12)
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- the page


def write_html(
    folder: Path,
    title: str,
    description: list[str],
    rows: list[dict[str, Any]],
    space: Space,
    importances: dict[str, float],
    no_importances: str,
    best: dict[str, Any] | None,
) -> Path:
    """``sweep.html``: one self-contained page (figures as data URIs, no JavaScript)."""
    counts = {s: sum(r["state"] == s for r in rows) for s in (*FINISHED, "waiting", "running")}
    cards = [
        ("best validation accuracy", _pct(best["value"]) if best else "–"),
        ("best trial", str(best["number"]) if best else "–"),
        ("finished", str(counts["complete"])),
        ("pruned", str(counts["pruned"])),
        ("failed", str(counts["failed"])),
        ("training time", _duration(sum(r["seconds"] or 0 for r in rows))),
    ]
    if counts["waiting"] or counts["running"]:
        cards.append(("still to run", str(counts["waiting"] + counts["running"])))
    body = [f"<h1>{_esc(title)}</h1>"]
    body += [f'<p class="sub">{_esc(line)}</p>' for line in description]
    body.append(_cards(cards))
    if best is not None:
        body.append("<h2>Best trial</h2>")
        body.append(_best_html(best, folder))
    body.append("<h2>Search space</h2>")
    body.append(_space_html(space))
    done = [r for r in rows if r["state"] in FINISHED]
    if done:
        body.append("<h2>Optimisation history</h2>")
        body.append(_img(plots.png_bytes(history_figure(rows)), "optimisation history"))
        if any(len(r["curve"]) > 1 for r in rows):
            body.append(_img(plots.png_bytes(curves_figure(rows)), "validation accuracy per epoch"))
        body.append("<h2>Settings</h2>")
        if importances:
            body.append(_img(plots.png_bytes(importance_figure(importances)), "importances"))
            body.append(
                '<p class="note">Importance (fANOVA): each setting\'s share of the variation in '
                "validation accuracy over the finished trials; with fewer than about 20 trials "
                "a rough guide only.</p>"
            )
        else:
            body.append(f'<p class="note">No importances: {_esc(no_importances)}.</p>')
        body.append(_img(plots.png_bytes(slices_figure(rows, space.params)), "slices"))
    body.append("<h2>Trials</h2>")
    body.append(_trials_html(rows, space.names, best))
    page = _page(title, "\n".join(body))
    return _write_text(folder / HTML_FILE, page)


def _best_html(best: dict[str, Any], folder: Path) -> str:
    cells = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(fmt_value(v))}</td></tr>"
        for k, v in best["params"].items()
    )
    return (
        f'<table class="kv"><tbody>{cells}</tbody></table>'
        f"<p>Validation accuracy {_pct(best['value'])}; its settings are in "
        f"<code>{_esc(BEST_FILE)}</code>: <code>cifarlab train --config "
        f"{_esc(folder / BEST_FILE)}</code> trains them, and its run is "
        f"<code>{_esc(best['folder'] or '–')}</code>.</p>"
    )


def _space_html(space: Space) -> str:
    rows = "".join(
        f"<tr><td>{_esc(p.name)}</td><td>{_esc(p.describe())}</td></tr>" for p in space.params
    )
    fixed = ", ".join(f"{k} = {fmt_value(v)}" for k, v in space.base.items()) or "none"
    return (
        f'<table class="kv"><tbody>{rows}</tbody></table>'
        f'<p class="note">Fixed in {_esc(space.source)}: {_esc(fixed)}</p>'
    )


def _trials_html(rows: list[dict[str, Any]], names: list[str], best: dict[str, Any] | None) -> str:
    titles = ["trial", "state", "val acc", *names, "epochs", "time", "note"]
    left = {1, len(titles) - 1}  # state and note: text
    head = "".join(f"<th{_LEFT if i in left else ''}>{_esc(h)}</th>" for i, h in enumerate(titles))
    body = []
    for r in rows:
        cls = ' class="best"' if best is not None and r["number"] == best["number"] else ""
        cells = [str(r["number"]), r["state"], _pct(r["value"]) if r["value"] is not None else "–",
                 *(fmt_value(r["params"][n]) if n in r["params"] else "–" for n in names),
                 str(r["epochs"] or "–"), _duration(r["seconds"]), r["reason"]]  # fmt: skip
        body.append(
            f"<tr{cls}>"
            + "".join(
                f"<td{_LEFT if i in left else ''}>{_esc(c)}</td>" for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="note">val acc: the trial\'s best validation accuracy (a pruned trial: its '
        "last); the table is also in trials.csv.</p>"
    )
