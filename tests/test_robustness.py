"""``cifarlab robustness`` (cifarlab/robustness/evaluate.py; its figures in report/plots.py, its
report section in report/html.py, its command in cli.py): corrupted sets made once and cached,
a trained run evaluated on them, the result's arithmetic, its figures, the report section and
the command line. The corruptions themselves are tested in test_corruptions.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fakedata
from cifarlab.data.corruptions import CORRUPTIONS, NOTES
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.report.html import robustness_section
from cifarlab.robustness.evaluate import (
    cache_folder,
    cache_key,
    corrupted_set,
    parse_corruptions,
    parse_severities,
    run_robustness,
)
from cifarlab.runs import RunFolder
from conftest import cli_run

NAMES = ["gaussian_noise", "frost", "contrast"]  # frost: one with a note
LEVELS = [1, 5]
IMAGES = 200
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CIFARLAB_CACHE": str(cache)}
    return cli_run(  # a warm fork: nothing here needs a fresh interpreter (tests/conftest.py)
        [sys.executable, "-m", "cifarlab", "robustness", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# --------------------------------------------------------------------------- parsing


def test_corruptions_and_severities_are_parsed() -> None:
    assert parse_corruptions("all") == list(CORRUPTIONS)
    assert parse_corruptions(" fog , gaussian_noise,fog") == ["gaussian_noise", "fog"]
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("5,1,3") == [1, 3, 5]
    assert parse_severities(" 2 ") == [2]
    assert parse_severities("1-2,4") == [1, 2, 4]
    with pytest.raises(
        SettingError,
        match=r"^corruptions names an unknown corruption "
        r"'gausian_noise' \(did you mean gaussian_noise\?\): choose all, or "
        r"names from gaussian_noise, shot_noise",
    ) as e:
        parse_corruptions("gausian_noise,fog")
    assert "\n" not in str(e.value) and "jpeg_compression" in str(e.value)
    for bad in ("", "fog,", "All,fog"):
        with pytest.raises(SettingError, match="^corruptions "):
            parse_corruptions(bad)
    for bad in ("0", "6", "1-6", "5-1", "1-", "a", "", "1,,2", "1.5"):
        with pytest.raises(SettingError, match=r"^severities must be levels 1\.\.5"):
            parse_severities(bad)


# --------------------------------------------------------------------------- the cache


def test_corrupted_sets_are_cached_and_rebuilt_when_damaged(isolated_cache: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    key = cache_key(images, seed=3)
    assert cache_folder(key).parent == isolated_cache / "corrupted"
    assert key != cache_key(images, seed=4) and key != cache_key(images[:5], seed=3)
    first = corrupted_set(images, "gaussian_noise", 2, seed=3, key=key)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert not np.array_equal(first, images)
    path = cache_folder(key) / "gaussian_noise-2.npy"
    assert [p.name for p in cache_folder(key).iterdir()] == [path.name]  # no temporary left
    stamp = path.stat().st_mtime_ns
    again = corrupted_set(images, "gaussian_noise", 2, seed=3)  # the key computed again
    assert isinstance(again, np.memmap) and np.array_equal(again, first)
    assert path.stat().st_mtime_ns == stamp  # read, not written again
    path.write_bytes(path.read_bytes()[:100])  # a file cut short (a crash before rename cannot)
    assert np.array_equal(corrupted_set(images, "gaussian_noise", 2, seed=3, key=key), first)
    assert path.stat().st_size > 100
    with pytest.raises(CifarlabError, match="unknown corruption 'rain'"):
        corrupted_set(images, "rain", 1, key=key)
    with pytest.raises(CifarlabError, match="severity must be one of"):
        corrupted_set(images, "fog", 6, key=key)
    with pytest.raises(CifarlabError, match="not a corrupted-set cache key"):
        corrupted_set(images, "fog", 1, key="../elsewhere")


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def robust(
    trained_run: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A run on 200 images, 3 corruptions × 2 severities, twice (the second from the cache)."""
    out = tmp_path_factory.mktemp("robust")
    kw = dict(corruptions=NAMES, severities=LEVELS, images=IMAGES, device="cpu", progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(shared_cache))
        first = run_robustness(trained_run, out=out / "first", **kw)
        folder = Path(first["cache"]["folder"])
        stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
        second = run_robustness(trained_run, **kw)  # no out: nothing written for a subset
        after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    return {
        "first": first,
        "second": second,
        "out": out / "first",
        "stamps": stamps,
        "after": after,
        "run": trained_run,
    }


def test_result_fields_and_headline(robust: dict[str, Any]) -> None:
    r = robust["first"]
    assert r["split"] == "test" and r["images"] == IMAGES and r["split_images"] == 10000
    assert r["subset"].startswith("class-stratified") and r["comparable"] is False
    assert r["tta"] == 0 and r["seed"] == 0 and r["checkpoint"] == "best"
    assert 1 <= r["checkpoint_epoch"] <= 3
    assert r["corruptions"] == ["gaussian_noise", "frost", "contrast"]  # CIFAR-10-C's order
    assert r["severities"] == LEVELS and isinstance(r["corruptions_version"], int)
    assert r["recipe"] == "quick" and r["recipe_version"] == 2  # which recipe was measured
    assert r["trained_with"].startswith("quick version 2 (FastNet recipes: the whitening")
    assert "Hendrycks & Dietterich" in r["reference"] and "26.9 %" in r["reference"]
    per = r["per_corruption"]
    assert list(per) == r["corruptions"]
    cells = [a for p in per.values() for a in p["accuracy_by_severity"].values()]
    for acc in [r["clean_accuracy"], *cells]:
        assert 0 <= acc <= 1 and round(acc * IMAGES) == pytest.approx(acc * IMAGES, abs=1e-9)
    for name, p in per.items():
        assert list(p["accuracy_by_severity"]) == ["1", "5"]
        assert p["mean_accuracy"] == pytest.approx(
            np.mean(list(p["accuracy_by_severity"].values()))
        )
        assert p["note"] == NOTES.get(name)
    assert per["gaussian_noise"]["family"] == "noise" and per["frost"]["family"] == "weather"
    assert per["frost"]["note"]  # frost is a procedural stand-in: said so
    mean = np.mean(cells)
    assert r["mean_corruption_accuracy"] == pytest.approx(mean)
    assert r["mean_corruption_error"] == pytest.approx(1 - mean)
    assert r["relative_drop"] == pytest.approx((r["clean_accuracy"] - mean) / r["clean_accuracy"])
    assert r["worst"] == sorted(per, key=lambda n: per[n]["mean_accuracy"])
    assert list(r["per_family"]) == ["noise", "weather", "digital"]
    assert r["per_family"]["digital"]["mean_accuracy"] == per["contrast"]["mean_accuracy"]
    # the corruptions hurt: severity 5 of gaussian noise is worse than clean
    assert per["gaussian_noise"]["accuracy_by_severity"]["5"] < r["clean_accuracy"]
    for name in NAMES:
        assert set(r["timing"][name]) == {"generate_s", "evaluate_s"}
    assert r["timing"]["total_s"] > 0
    written = json.loads((robust["out"] / "robustness.json").read_text())
    assert written == {k: v for k, v in r.items() if k != "written"}
    assert r["written"] == [
        str(robust["out"] / f)
        for f in ("robustness.json", "robustness_heatmap.png", "robustness_examples.png")
    ]


def test_a_second_run_reads_the_cache(robust: dict[str, Any]) -> None:
    first, second = robust["first"], robust["second"]
    assert first["cache"]["generated"] + first["cache"]["loaded"] == len(NAMES) * len(LEVELS)
    assert second["cache"]["generated"] == 0 and second["cache"]["loaded"] == 6
    assert robust["after"] == robust["stamps"]  # the same files, none rewritten, none added
    assert sorted(robust["stamps"]) == sorted(f"{n}-{s}.npy" for n in NAMES for s in LEVELS)
    assert second["per_corruption"] == first["per_corruption"]
    assert second["written"] == []  # a subset is never the run's record unless out= says so
    assert not RunFolder(robust["run"]).robustness_path.exists()


def test_figures_are_pngs_of_a_readable_size(robust: dict[str, Any]) -> None:
    for what, least in (("heatmap", (600, 300)), ("examples", (500, 300))):
        data = RunFolder(robust["out"]).robustness_figure_path(what).read_bytes()
        assert data.startswith(PNG) and data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert least[0] <= width <= 2500 and least[1] <= height <= 2500, (what, width, height)


def test_report_section(robust: dict[str, Any], tmp_path: Path) -> None:
    r = robust["first"]
    html = robustness_section(robust["out"])
    assert html.startswith('<section id="robustness">') and "Robustness to corruptions" in html
    assert f"{100 * r['clean_accuracy']:.1f}%" in html
    assert f"{100 * r['mean_corruption_accuracy']:.1f}%" in html
    assert "200 of 10,000 test images (a subset)" in html and "WRN-40-2 26.9%" in html
    assert html.count("data:image/png;base64,") == 2 and "frost" in html
    assert "Not the published protocol" in html
    assert "trained with quick version 2 (FastNet recipes" in html
    assert robustness_section(tmp_path) is None  # no record: no section
    RunFolder(tmp_path).robustness_path.write_text('{"clean_accuracy": 2}')
    broken = robustness_section(tmp_path)  # a broken record: said, the report goes on
    assert "not a robustness record written by cifarlab" in broken


def test_only_the_whole_test_split_is_written_into_the_run_folder(
    trained_run: Path, tmp_path: Path
) -> None:
    """The whole test split is the run's record; val is not (and its clean accuracy is
    evaluate's on val: the same images through the same code). On a small stand-in dataset
    (--root), to be quick: 1,100 train images (1,000 held out for val), 100 test images."""
    from cifarlab import evaluate_run

    fake = tmp_path / "data"
    fakedata.write_cifar10_python(fake, per_batch=220, test=100)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = RunFolder(run)
    kw = dict(corruptions="brightness", severities="1", root=fake, device="cpu", progress=False)
    r = run_robustness(run, split="val", **kw)
    assert r["split"] == "val" and r["images"] == 1000 and r["subset"] is None
    assert r["written"] == [] and not folder.robustness_path.exists()
    metrics = evaluate_run(run, "val", root=fake, device="cpu", tta=0, report=False)
    assert r["clean_accuracy"] == metrics["accuracy"]
    r = run_robustness(run, examples=False, **kw)
    assert r["images"] == r["split_images"] == 100 and r["subset"] is None
    assert r["written"] == [
        str(folder.robustness_path),
        str(folder.robustness_figure_path("heatmap")),
    ]
    assert not folder.robustness_figure_path("examples").exists()
    assert "100 test images" in robustness_section(run)
    # once the run is evaluated on test, robustness writes its report again, with the section
    evaluate_run(run, "test", root=fake, device="cpu")
    assert "Robustness to corruptions" in folder.report_path("test").read_text()
    folder.robustness_path.unlink()
    evaluate_run(run, "test", root=fake, device="cpu")
    assert "Robustness to corruptions" not in folder.report_path("test").read_text()
    r = run_robustness(run, examples=False, **kw)
    assert r["written"][-1] == str(folder.report_path("test"))
    assert "Robustness to corruptions" in folder.report_path("test").read_text()


def test_run_options_are_checked_before_anything_is_loaded(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    for kw, problem in (
        ({"split": "train"}, "^split must be test or val"),
        ({"images": 0}, "^images must be at least 1"),
        ({"seed": -1}, "^seed must be"),
        ({"tta": 3}, "^tta must be one of 0, 1, 2"),
        ({"severities": [0]}, "^severities must be"),
        ({"corruptions": ["rain"]}, "^corruptions names an unknown corruption 'rain'"),
    ):
        with pytest.raises(SettingError, match=problem):
            run_robustness(missing, **kw)


# --------------------------------------------------------------------------- the command


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (
            ["--corruptions", "gausian_noise"],
            "error: --corruptions names an unknown corruption "
            "'gausian_noise' (did you mean gaussian_noise?): choose all, or names from ",
        ),
        (["--severities", "0-3"], "error: --severities must be levels 1..5"),
    ):
        p = cli(str(tmp_path), *args, cache=tmp_path)
        assert p.returncode == 1 and p.stdout == "", p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), p.stderr


def test_command_prints_the_table_and_json(robust: dict[str, Any], shared_cache: Path) -> None:
    common = [
        str(robust["run"]),
        "--images",
        str(IMAGES),
        "--corruptions",
        ",".join(NAMES),
        "--severities",
        "1,5",
        "--device",
        "cpu",
        "--no-progress",
    ]
    p = cli(*common, cache=shared_cache)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    r = robust["first"]
    assert "200 of 10,000 test images (a subset)" in out
    assert "family means: noise" in out and "worst: " in out
    row = next(line for line in out.splitlines() if line.strip().startswith("gaussian_noise"))
    noise = r["per_corruption"]["gaussian_noise"]
    by, mean = noise["accuracy_by_severity"], noise["mean_accuracy"]
    assert row.split()[1:] == [f"{100 * a:.1f}" for a in (by["1"], by["5"], mean)]
    assert f"mean corruption error {r['mean_corruption_error']:.1%}" in out
    assert "WRN-40-2 26.9%" in out and "frost: " in out and "not the published protocol" in out
    assert "0 sets made, 6 from the cache" in out and "nothing written" in out
    p = cli(*common, "--json", cache=shared_cache)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["per_corruption"] == r["per_corruption"] and got["written"] == []


def test_a_record_that_is_not_ours_gives_a_note_not_a_failure(
    robust: dict[str, Any], tmp_path: Path
) -> None:
    """robustness.json comes from a run folder, i.e. from anyone: each of these gives the
    section with one line saying what is wrong."""
    good = json.loads((robust["out"] / "robustness.json").read_text())
    path = RunFolder(tmp_path).robustness_path
    hostile = [
        "[" * 100000,
        "not json",
        b"\xff\xfe",
        "[]",
        {**good, "worst": [[1]]},
        {**good, "corruptions": [{}]},
        {**good, "split_images": "many", "subset": "x"},
        {**good, "per_corruption": {"fog": 1}, "corruptions": ["fog"]},
        {**good, "severities": [True]},
        {**good, "clean_accuracy": float("nan")},
        {**good, "tta": None},
    ]
    for record in hostile:
        if isinstance(record, bytes):
            path.write_bytes(record)
        else:
            path.write_text(record if isinstance(record, str) else json.dumps(record))
        html = robustness_section(tmp_path)
        assert html.startswith('<section id="robustness">') and "run cifarlab robustness" in html
    path.unlink()
    path.mkdir()  # not a file at all
    assert "is a folder" in robustness_section(tmp_path)
