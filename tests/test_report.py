"""The figures and the HTML reports, built from synthetic predictions; one test opens the
report in headless Chromium and checks that every image really loads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.evaluate.metrics import compute_metrics
from cifarlab.report import plots
from cifarlab.report.html import write_comparison, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = [
    "training_curves.png",
    "confusion_matrix.png",
    "predicted_vs_true.png",
    "predictions.png",
    "mistakes.png",
]
SECTIONS = [
    "summary",
    "config",
    "curves",
    "classification-report",
    "confusion",
    "counts",
    "predictions",
    "mistakes",
]
# Debian's package puts it at /usr/bin/chromium; elsewhere it may be chromium-browser.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def synthetic_run(num_classes: int, n: int = 400, seed: int = 0) -> dict:
    """Everything write_report takes, for a model that is right about half the time."""
    rng = np.random.default_rng(seed)
    names = [f"class_{i}" for i in range(num_classes)]
    names[0] = "<b>&weird</b>"  # must come out escaped
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_acc": 0.2 * e,
            "val_loss": 2.2 / e,
            "val_acc": 0.18 * e,
            "lr": 0.01,
            "epoch_seconds": 1.5,
            "images_per_s": 3e4,
        }
        for e in (1, 2, 3)
    ]
    config = {
        "model": "simple_cnn",
        "dataset": "cifar10" if num_classes == 10 else "cifar100",
        "labels": "fine",
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.01,
        "optimizer": "sgd",
        "seed": 0,
        "params": 122570,
        "class_names": names,
        "train_seconds": 75.2,
    }
    return {
        "config": config,
        "history": history,
        "metrics": compute_metrics(labels, probs, names),
        "images": images,
        "probs": probs,
        "labels": labels,
    }


@pytest.fixture(scope="module", params=[10, 100], ids=["10-classes", "100-classes"])
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = synthetic_run(request.param)
    run_dir = tmp_path_factory.mktemp(f"run{request.param}")
    return write_report(
        run_dir,
        run["config"],
        run["history"],
        run["metrics"],
        run["images"],
        run["probs"],
        labels=run["labels"],
    )


def image_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


@pytest.mark.slow
def test_report_files(report: Path) -> None:
    assert report.name == "report.html"
    for name in FIGURES:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5000, name  # not an empty canvas
    assert not list(report.parent.glob("*.tmp")), "temporary files left behind"


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    sources = image_sources(page)
    assert len(sources) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    # No external resource of any kind: no links, scripts, style sheets or file references.
    for needle in ("http://", "https://", "file:", "<script", "<link", "url(", '.png"'):
        assert needle not in page, needle
    assert "<b>&weird</b>" not in page and "&lt;b&gt;&amp;weird&lt;/b&gt;" in page
    assert "simple_cnn" in page and "1 min 15 s" in page and "122,570" in page


def test_report_rejects_mismatched_inputs(tmp_path: Path) -> None:
    run = synthetic_run(10, n=50)
    with pytest.raises(ValueError, match="must match"):
        write_report(
            tmp_path,
            run["config"],
            run["history"],
            run["metrics"],
            run["images"][:10],
            run["probs"],
            labels=run["labels"],
        )
    other = np.roll(run["probs"], 1, axis=1)
    with pytest.raises(ValueError, match="not the ones"):
        write_report(
            tmp_path,
            run["config"],
            run["history"],
            run["metrics"],
            run["images"],
            other,
            labels=run["labels"],
        )


def test_report_reads_labels_saved_beside_the_run(tmp_path: Path) -> None:
    """Without labels=, the labels come from predictions_<split>.npz (as evaluate_run saves)."""
    run = synthetic_run(10, n=50)
    args = (run["config"], run["history"], run["metrics"], run["images"], run["probs"])
    with pytest.raises(ValueError, match="needs the true labels"):
        write_report(tmp_path, *args)
    other = (run["labels"] + 1) % 10  # other labels, other class counts: another split's file
    np.savez(tmp_path / "predictions_test.npz", labels=other, probs=run["probs"])
    with pytest.raises(ValueError, match="does not hold the labels"):
        write_report(tmp_path, *args)
    np.savez(tmp_path / "predictions_test.npz", labels=run["labels"], probs=run["probs"])
    assert write_report(tmp_path, *args).is_file()


def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    """Load the page in a real browser: every <img> must decode to a non-empty image."""
    if not Path(CHROMIUM).exists():
        message = "no chromium on the PATH (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run), so a skip there would hide a bug
        pytest.skip(message)
    probe = (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        " const pre = document.createElement('pre'); pre.id = 'result';"
        " pre.textContent = `images=${imgs.length} loaded=${ok}`;"
        " document.body.appendChild(pre); });</script>"
    )
    page = report.read_text(encoding="utf-8").replace("</body>", probe + "</body>")
    probed = tmp_path / "probed.html"
    probed.write_text(page, encoding="utf-8")
    profile = tmp_path / "profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="result">images=(\d+) loaded=(\d+)</pre>', out.stdout)
    assert found, f"no result from chromium (rc {out.returncode}): {out.stderr[-2000:]}"
    total, loaded = map(int, found.groups())
    assert total >= 5 and loaded == total


def test_comparison(tmp_path: Path) -> None:
    a, b = synthetic_run(10, seed=1), synthetic_run(10, seed=2)
    b["history"] = [dict(row, val_acc=None, val_loss=None) for row in b["history"]]
    runs = [
        ("cnn-run", a["config"], a["metrics"], a["history"]),
        ("mlp-run", {**b["config"], "model": "mlp"}, b["metrics"], b["history"]),
    ]
    out = write_comparison(tmp_path / "compare.html", runs)
    page = out.read_text(encoding="utf-8")
    for sid in ("runs", "f1", "curves"):
        assert f'<section id="{sid}">' in page
    sources = image_sources(page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in page and "<script" not in page
    best, other = sorted(runs, key=lambda r: r[2]["accuracy"], reverse=True)
    lead = 100 * (best[2]["accuracy"] - other[2]["accuracy"])
    assert f"Best: {best[0]} with" in page and f"{lead:.1f} points above {other[0]}" in page
    assert page.count('class="best"') + page.count("class=best") == 1

    # Different classes: no per-class chart, a note instead; a directory gets comparison.html.
    c = synthetic_run(100, seed=3)
    out = write_comparison(tmp_path, [*runs, ("c100", c["config"], c["metrics"], c["history"])])
    assert out == tmp_path / "comparison.html"
    page = out.read_text(encoding="utf-8")
    assert "different classes" in page and "different data" in page


def test_figures_are_standalone() -> None:
    """Each plot function returns a Figure with titled axes, even for edge cases."""
    run = synthetic_run(10, n=60)
    m, labels, probs = run["metrics"], run["labels"], run["probs"]
    preds, top = probs.argmax(1), probs.max(1)
    fig = plots.training_curves([])
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    fig = plots.confusion_heatmap(m)
    assert (
        fig.axes[0].get_xlabel() == "predicted class" and fig.axes[0].get_ylabel() == "true class"
    )
    assert len(fig.axes[0].texts) == 100  # counts in the cells
    fig = plots.predicted_vs_true(m)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][1] == "class 1"
    # A perfect model: no mistakes to show, still a figure.
    fig = plots.confident_mistakes(run["images"], labels, labels, top, m["class_names"])
    assert "0 most confident mistakes" in fig.get_suptitle()
    fig = plots.prediction_grid(run["images"], labels, preds, top, m["class_names"], n=8)
    assert len([ax for ax in fig.axes if ax.images]) == 8
    with pytest.raises(ValueError, match="other classes"):
        big = synthetic_run(100, n=200)["metrics"]
        plots.f1_bars([("a", m), ("b", big)])


def test_atomic_write_names_the_target_and_leaves_nothing(tmp_path: Path) -> None:
    from cifarlab.errors import CifarlabError
    from cifarlab.files import atomic_write

    (tmp_path / "adir").mkdir()
    with pytest.raises(CifarlabError, match=r"cannot write .*adir: it is a folder"):
        atomic_write(tmp_path / "adir", lambda tmp: tmp.write_text("x"))

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write .*out\.json: No space left"):
        atomic_write(tmp_path / "out.json", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # no temp file, no target
    assert (
        atomic_write(tmp_path / "new" / "ok.txt", lambda t: t.write_text("ok")).read_text() == "ok"
    )


@pytest.mark.slow
def test_a_val_report_does_not_overwrite_the_test_report(tmp_path: Path) -> None:
    written = {}
    for split, seed in (("test", 0), ("val", 1)):
        run = synthetic_run(10, seed=seed)
        metrics = {**run["metrics"], "split": split}
        written[split] = write_report(
            tmp_path,
            run["config"],
            run["history"],
            metrics,
            run["images"],
            run["probs"],
            labels=run["labels"],
        )
    assert written["test"].name == "report.html" and written["val"].name == "report_val.html"
    assert "test split" in written["test"].read_text() and "val split" in written["val"].read_text()
    for name in FIGURES:
        assert (tmp_path / name).is_file() and (tmp_path / f"val_{name}").is_file()
        assert (tmp_path / name).read_bytes() != (tmp_path / f"val_{name}").read_bytes() or (
            name == "training_curves.png"
        )


# User text: class names (image-folder names), run names, file and model names, config values.
ODD_NAMES = [
    "$\\frac{a}{b}$",
    "$x^$",  # not even valid mathtext: matplotlib raised on it
    "<script>alert(1)</script>",
    "100% {x} \\ _y",
    "\udcff.png",  # a folder name that was not UTF-8
    "two\nlines",
    "&amp; \"q\" 'q'",
    "$$",
    "\\textbf{x}",
    "ok",
]


def _texts(fig: object) -> list:
    from matplotlib.text import Text

    return fig.findobj(Text)


def test_user_text_is_never_markup_or_math(tmp_path: Path) -> None:
    import matplotlib

    from cifarlab.report.samples import sample_grid, save_sample_grid

    run = synthetic_run(10, n=60)
    names = list(ODD_NAMES)
    m = compute_metrics(run["labels"], run["probs"], names)
    m["split"] = "<i>test</i>"
    config = {
        **run["config"],
        "class_names": names,
        "model": "<img src=x onerror=alert(1)>",
        "recipe": "$r$",
        "notes": "</td><script>alert(2)</script>",
        "params": float("nan"),
        "machine": "<b>cpu</b>",
    }
    run_dir = tmp_path / "<b>run $x$"
    # usetex on, as a user's matplotlibrc may say: no LaTeX is installed here, and none is run
    with matplotlib.rc_context({"text.usetex": True, "text.parse_math": True}):
        preds, top = run["probs"].argmax(1), run["probs"].max(1)
        images, labels = torch.from_numpy(run["images"]), torch.from_numpy(run["labels"])
        figures = [
            lambda: plots.confusion_heatmap(m),
            lambda: plots.predicted_vs_true(m),
            lambda: plots.prediction_grid(run["images"], run["labels"], preds, top, names, n=16),
            lambda: plots.confident_mistakes(run["images"], run["labels"], preds, top, names),
            lambda: plots.f1_bars([("$x^$", m), ("<b>", m)]),
            lambda: plots.val_accuracy_overlay([("$x^$", run["history"]), ("\udcff", [])]),
            lambda: plots.training_curves(run["history"]),
            lambda: sample_grid(images, labels, names, per_class=2, title="$x^$ <b>"),
            lambda: sample_grid(images, labels % 30, names * 3, per_class=1),  # > 20 classes
        ]
        for draw in figures:
            fig = draw()
            assert all(not t.get_usetex() and not t.get_parse_math() for t in _texts(fig))
            assert plots.png_bytes(fig).startswith(PNG_MAGIC)
        fig = plots.predicted_vs_true(m)
        shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert shown[:4] == [
            "$\\frac{a}{b}$",
            "$x^$",
            "<script>alert(1)</script>",
            "100% {x} \\  y",
        ]
        page = write_report(
            run_dir, config, run["history"], m, run["images"], run["probs"], labels=run["labels"]
        ).read_text(encoding="utf-8")
        out = save_sample_grid(
            torch.from_numpy(run["images"]),
            torch.from_numpy(run["labels"]),
            names,
            tmp_path / "s.png",
            per_class=1,
        )
        assert out.read_bytes().startswith(PNG_MAGIC)
        runs = [
            ("<script>alert(1)</script>", config, m, run["history"]),
            ("$x^$", {**config, "model": "\udcff"}, {**m, "accuracy": 0.1}, []),
        ]
        compare = write_comparison(tmp_path / "c.html", runs).read_text(encoding="utf-8")
    for text in (page, compare):
        assert "<script" not in text and "<img src=x" not in text and "<b>" not in text
        assert "<i>" not in text and "</td><script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "\\xff" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;run $x$" in page
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "&amp;amp; &quot;q&quot; &#x27;q&#x27;" in page
    assert "Best: &lt;script&gt;alert(1)&lt;/script&gt; with" in compare
