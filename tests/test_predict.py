"""Using a trained run: images of every common kind, Run.predict and `cifarlab predict`
(export: test_export.py)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
from cifarlab import load_run
from cifarlab.errors import CifarlabError
from cifarlab.predict import (
    ImageError,
    Prediction,
    Run,
    as_uint8_batch,
    find_images,
    image_files,
    load_image,
    resize_to_32,
    shown,
)
from conftest import run_cli
from hostile import image_bytes, mutate, png_claiming


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


_cli = run_cli

# --------------------------------------------------------------------------- images


def test_every_image_kind_becomes_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((48, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0  # a transparent strip: must come out white
    files = {
        "a.png": Image.fromarray(rgb),
        "b.jpg": Image.fromarray(rgb),
        "c.bmp": Image.fromarray(rgb),
        "d.webp": Image.fromarray(rgb),
        "e.png": Image.fromarray(rgba, "RGBA"),
        "f.png": Image.fromarray(rgb[:, :, 0], "L"),
        "g.gif": Image.fromarray(rgb).convert("P"),
        "h.tiff": Image.fromarray(rgb),
        "i.png": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),  # 16-bit grayscale
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    for name in files:
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (40, 48), name
    assert (np.asarray(load_image(tmp_path / "e.png"))[:, :10] == 255).all()
    gray = np.asarray(load_image(tmp_path / "f.png"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == rgb[:, :, 0]).all()
    # 16-bit grayscale comes out as the 8-bit save of the same picture would, not stretched
    sixteen = np.asarray(load_image(tmp_path / "i.png"))
    assert (sixteen[..., 0] == rgb[:, :, 0]).all()
    dark = (rgb[:, :, 0] // 4).astype(np.uint16) * 257
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert (np.asarray(load_image(tmp_path / "dark16.png"))[..., 0] == rgb[:, :, 0] // 4).all()


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    arr = np.asarray(load_image(tmp_path / "anim.gif"))
    assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50


def test_bad_files_name_themselves(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    for name, message in (("text.png", "not an image"),
                          ("cut.jpg", "cannot read the image: truncated or corrupt"),
                          ("missing.png", "no such file")):  # fmt: skip
        with pytest.raises(ImageError, match=f"{name}: {message}"):
            load_image(tmp_path / name)
    # more than Pillow's decompression-bomb limit (2 × 89.5 MP): one clear error, not a crash
    Image.new("1", (15000, 12000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="huge.png: refused, too many pixels"):
        load_image(tmp_path / "huge.png")


def test_resize_crop_keeps_the_centre_and_stretch_the_whole() -> None:
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, 24:104] = 255  # a white centre wider than the centre square, black sides
    crop = np.asarray(resize_to_32(Image.fromarray(arr), "crop"))
    stretch = np.asarray(resize_to_32(Image.fromarray(arr), "stretch"))
    assert crop.shape == stretch.shape == (32, 32, 3)
    assert crop.min() > 240  # only the white centre is left
    assert stretch[:, :4].max() < 20 and stretch[:, 10:22].min() > 240  # sides kept, squashed
    same = Image.fromarray(np.full((32, 32, 3), 7, np.uint8))
    assert np.array_equal(np.asarray(resize_to_32(same)), np.asarray(same))


def test_every_input_type_gives_the_same_batch() -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = as_uint8_batch(arr)
    float_chw = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    uint8_chw = torch.from_numpy(arr).permute(2, 0, 1)  # as torchvision.io.read_image gives
    for x in (Image.fromarray(arr), arr[None], torch.from_numpy(arr), [arr], float_chw,
              float_chw[None], uint8_chw, uint8_chw[None]):  # fmt: skip
        assert np.array_equal(as_uint8_batch(x), want)
    assert as_uint8_batch([arr, Image.fromarray(arr)]).shape == (2, 32, 32, 3)
    with pytest.raises(CifarlabError, match="must be uint8"):
        as_uint8_batch(arr.astype(np.float32))
    with pytest.raises(CifarlabError, match="no images"):
        as_uint8_batch([])


# --------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_run_predict_agrees_with_evaluation(
    trained_run: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = test_images
    run = load_run(trained_run)
    pred = run.predict(images)
    assert pred.probs.shape == (200, 10) and np.allclose(pred.probs.sum(1), 1, atol=1e-5)
    assert (pred.indices == labels).mean() > 0.45  # trained, not chance (0.10)
    assert pred.labels[0] == run.class_names[pred.indices[0]]
    top = pred.top_k(3)[0]
    assert [c for c, _ in top][0] == pred.labels[0] and top[0][1] >= top[1][1] >= top[2][1]
    one = run.predict(Image.fromarray(images[5]))
    assert np.allclose(one.probs[0], pred.probs[5], atol=1e-5)


@pytest.mark.slow
def test_cli_predict_table_json_and_errors(
    trained_run: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, _ = test_images
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(images[0]).resize((320, 240)).save(folder / "big.jpg")
    Image.fromarray(images[1]).save(folder / "sub" / "small.png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    (tmp_path / "fake.png").write_text("not an image")
    ok = _cli("predict", str(trained_run), str(folder), "--top-k", "2")
    assert ok.returncode == 0, ok.stderr
    assert "big.jpg" in ok.stdout and "small.png" in ok.stdout and "top 2" in ok.stdout
    assert "notes.txt" not in ok.stdout

    r = _cli("predict", str(trained_run), str(folder), str(tmp_path / "fake.png"),
             str(tmp_path / "gone.png"), "--json")  # fmt: skip
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert [Path(row["file"]).name for row in rows] == ["big.jpg", "small.png", "fake.png",
                                                        "gone.png"]  # fmt: skip
    assert len(rows[0]["top_k"]) == 3 and rows[0]["label"] == rows[0]["top_k"][0]["class"]
    assert "not an image" in rows[2]["error"] and "no such file" in rows[3]["error"]
    assert "fake.png: not an image" in r.stderr and "gone.png: no such file" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("predict", str(tmp_path / "norun"), str(folder))
    assert r.returncode == 1 and "no such run folder" in r.stderr


def test_transparent_pixels_of_palette_and_gray_images_come_out_white(tmp_path: Path) -> None:
    """Palette images (GIF, PNG-8) and grayscale PNGs mark one value transparent (tRNS)."""
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    pal.paste(1, (0, 0, 8, 16))  # left half red, right half colour 0: transparent
    gray = Image.fromarray(np.where(np.arange(16) < 8, 40, 0).astype(np.uint8)[None].repeat(16, 0))
    for name, im in (("p.png", pal), ("p.gif", pal), ("g.png", gray)):
        im.save(tmp_path / name, transparency=0)
        arr = np.asarray(load_image(tmp_path / name))
        assert (arr[:, 8:] == 255).all(), name  # the transparent half: white, not black
        assert (arr[:, :8] != 255).any(), name


# --------------------------------------------------------------------------- hostile files


def hostile_files(folder: Path) -> dict[str, str]:
    """Bad image files in ``folder``: name → what the error must say."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "empty.png": (b"", "not an image"),
        "text.png": (b"hello\n", "not an image"),
        "cut.png": (image_bytes("PNG", size=(64, 64))[:300], "truncated or corrupt"),
        "header-20000x20000.png": (png_claiming(20000, 20000, 4), "too many pixels"),
        "12000x12000.png": (png_claiming(12000, 12000, 1), "too many pixels"),
        "1x3000000.png": (png_claiming(1, 3_000_000, 1), "too long and thin"),
        "3000000x1.png": (png_claiming(3_000_000, 1, 1), "too long and thin"),
        "script.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n", "not an image"),
    }
    for name, (data, _) in made.items():
        (folder / name).write_bytes(data)
    os.mkfifo(folder / "pipe.png")
    with open(folder / "sparse.png", "wb") as f:
        f.truncate(300 << 30)  # 300 GB that take no disk space
    return {name: why for name, (_, why) in made.items()} | {
        "pipe.png": "named pipe (FIFO), not a regular file",
        "sparse.png": "over the limit of 64.0 MB (raise it with CIFARLAB_MAX_IMAGE_FILE_MB=MB)",
    }


def test_hostile_files_are_one_error_each_and_never_hang(tmp_path: Path) -> None:
    start = time.monotonic()
    for name, why in hostile_files(tmp_path).items():
        with pytest.raises(ImageError) as e:
            resize_to_32(load_image(tmp_path / name))
        message = str(e.value)
        assert message.startswith(f"{tmp_path / name}: ") and why in message, message
        assert "\n" not in message
    assert time.monotonic() - start < 10


def test_mutated_files_of_every_format_give_an_image_or_an_image_error(tmp_path: Path) -> None:
    """Fuzzed GIF/TIFF (and the other formats) make Pillow raise IndexError, TypeError,
    struct.error, ValueError...: always one ImageError naming the file, or an image."""
    outcomes = set()
    for fmt, ext in (("GIF", "gif"), ("TIFF", "tif"), ("PNG", "png"), ("JPEG", "jpg"),
                     ("BMP", "bmp"), ("WEBP", "webp")):  # fmt: skip
        base = image_bytes(fmt, 2 if fmt in ("GIF", "TIFF") else 1)
        for seed in range(40):
            path = tmp_path / f"m{seed}.{ext}"
            path.write_bytes(mutate(base, seed, 8))
            try:
                im = resize_to_32(load_image(path))
                assert im.size == (32, 32) and im.mode == "RGB"
                outcomes.add("image")
            except ImageError as e:
                assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
                outcomes.add("error")
    assert outcomes == {"image", "error"}


def test_any_decoder_exception_is_this_files_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the decoder raises (here, each in turn from load()), one ImageError."""
    from PIL import PngImagePlugin

    (tmp_path / "ok.png").write_bytes(image_bytes("PNG"))
    for exc in (IndexError("list index out of range"), TypeError("bad\noperand"),
                struct.error("unpack requires a buffer of 4 bytes"), KeyError(3), EOFError(),
                ZeroDivisionError("division by zero"), RecursionError("too deep"),
                MemoryError(), Image.DecompressionBombError("bomb")):  # fmt: skip

        def load(self, exc=exc):  # noqa: ANN001, ANN202
            raise exc

        monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
        with pytest.raises(ImageError, match=r"ok\.png: ") as e:
            load_image(tmp_path / "ok.png")
        assert "\n" not in str(e.value)


def test_frames_are_never_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first frame is used without asking n_frames (which walks every frame and raises
    on a broken one): a 300-frame GIF is as quick as one frame."""
    from PIL import GifImagePlugin, TiffImagePlugin

    def broken(self):  # noqa: ANN001, ANN202
        raise IndexError("n_frames must not be asked")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(broken))
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(broken))
    frames = [Image.new("P", (32, 32), k) for k in range(300)]
    for frame in frames:
        frame.putpalette([v for k in range(256) for v in (k, 255 - k, 7)])
    frames[0].save(tmp_path / "many.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "two.tif").write_bytes(image_bytes("TIFF", 2))
    assert (np.asarray(load_image(tmp_path / "many.gif")) == (0, 255, 7)).all()
    assert load_image(tmp_path / "two.tif").size == (32, 32)


def test_header_limits_can_be_raised_and_bad_settings_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (300, 2)).save(tmp_path / "wide.png")
    with pytest.raises(ImageError, match=r"aspect ratio 150:1; the limit is 100:1"):
        load_image(tmp_path / "wide.png")
    monkeypatch.setenv("CIFARLAB_MAX_ASPECT", "200")
    assert load_image(tmp_path / "wide.png").size == (300, 2)
    monkeypatch.setenv("CIFARLAB_MAX_IMAGE_PIXELS", "500")
    with pytest.raises(ImageError, match=r"300×2 = 600; the limit is 500, raise it with CIFARLAB_"):
        load_image(tmp_path / "wide.png")
    # raised above Pillow's own bound (made small here), ours decides, and Pillow's is put back
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("CIFARLAB_MAX_IMAGE_PIXELS", "5000")
    Image.new("RGB", (60, 60)).save(tmp_path / "square.png")
    assert load_image(tmp_path / "square.png").size == (60, 60)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setenv("CIFARLAB_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(CifarlabError, match="CIFARLAB_MAX_IMAGE_PIXELS='lots'") as e:
        load_image(tmp_path / "wide.png")
    assert not isinstance(e.value, ImageError)  # a setting, not this file's problem


def test_resize_of_any_shape_is_bounded_and_ordinary_ones_unchanged() -> None:
    """crop: a 1 × 3,000,000 image is not scaled to 32 × 96,000,000 first (9 GB); beyond
    16:1 only the centre is scaled, the same numbers within ±1."""
    start = time.monotonic()
    for size in ((1, 3_000_000), (3_000_000, 1), (1, 1), (2, 5000)):
        im = Image.new("RGB", size, (10, 200, 30))
        for method in ("crop", "stretch"):
            out = np.asarray(resize_to_32(im, method))
            assert out.shape == (32, 32, 3) and (np.abs(out.astype(int) - (10, 200, 30)) <= 1).all()
    assert time.monotonic() - start < 5
    rng = np.random.default_rng(3)
    for h, w in ((40, 48), (64, 128), (37, 2000), (2000, 37), (3, 700)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        scale = 32 / min(w, h)
        tw, th = max(32, round(w * scale)), max(32, round(h * scale))
        full = Image.fromarray(arr).resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)
        left, top = (tw - 32) // 2, (th - 32) // 2
        want = np.asarray(full.crop((left, top, left + 32, top + 32))).astype(int)
        got = np.asarray(resize_to_32(Image.fromarray(arr))).astype(int)
        if max(w, h) / min(w, h) <= 16:
            assert np.array_equal(got, want), (h, w)  # the one resize rule, bit for bit
        else:
            assert np.abs(got - want).max() <= 1, (h, w)
    with pytest.raises(CifarlabError, match="at least one pixel"):
        resize_to_32(Image.new("RGB", (0, 5)))


def test_folders_are_walked_without_recursion_within_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = tmp_path / "photos"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "x.png").write_bytes(image_bytes("PNG"))
    (top / "a" / "b" / "y.jpg").write_bytes(image_bytes("JPEG"))
    (top / "notes.txt").write_text("not an image")
    os.symlink("..", top / "a" / "b" / "up")  # a loop
    os.symlink(top / "a", top / "link-to-a")  # a linked folder inside: not searched
    os.symlink("nowhere.png", top / "dangling.png")
    os.mkfifo(top / "pipe.png")
    chain = [top / "deep"]
    for _ in range(1100):  # deeper than Python's recursion limit
        chain.append(chain[-1] / "d")
    for folder in chain:
        folder.mkdir()
    (chain[-1] / "z.png").write_bytes(image_bytes("PNG"))
    try:
        found = {r.path.relative_to(top).as_posix(): r.error for r in find_images([top])}
    finally:  # pytest's clean-up would recurse (shutil.rmtree) and fail on it
        (chain[-1] / "z.png").unlink()
        for folder in reversed(chain):
            folder.rmdir()
    deep_error = next(k for k, v in found.items() if v and "folders deep" in v)
    assert deep_error.count("/") == 64 and "CIFARLAB_MAX_FOLDER_DEPTH" in found[deep_error]
    assert {k: v for k, v in found.items() if k != deep_error} == {
        "a/x.png": None, "a/b/y.jpg": None, "dangling.png": None, "pipe.png": None,
    }  # fmt: skip
    assert image_files([top, tmp_path / "missing.png"])[-1] == tmp_path / "missing.png"

    # a folder that cannot be listed is said, not skipped silently
    real_scandir = os.scandir

    def scandir(path):  # noqa: ANN001, ANN202
        if Path(path).name == "b":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors = {r.path.name: r.error for r in find_images([top]) if r.error}
    assert errors["b"].endswith("b: cannot list this folder (Permission denied); its images "
                                "are skipped")  # fmt: skip
    monkeypatch.setattr(os, "scandir", real_scandir)
    monkeypatch.setenv("CIFARLAB_MAX_FOLDER_FILES", "4")
    last = find_images([top])
    assert any(r.error and "more than 4 files and folders" in r.error for r in last)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder")
def test_an_unreadable_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "closed").mkdir()
    (tmp_path / "closed" / "x.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "closed").chmod(0)
    try:
        (r,) = find_images([tmp_path])
        assert r.path.name == "closed" and "cannot list this folder" in r.error
    finally:
        (tmp_path / "closed").chmod(0o755)


def test_names_that_are_not_utf8_print_and_make_valid_json(tmp_path: Path) -> None:
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff\xfe photo\n.png")
    Path(name).write_bytes(image_bytes("PNG"))
    (r,) = find_images([tmp_path])
    assert shown(r.path) == f"{tmp_path}/\\xff\\xfe photo .png"
    shown(r.path).encode("utf-8", "strict")
    r.error = "x"
    assert json.loads(json.dumps(r.to_dict()))["file"] == shown(r.path)


class _FixedRun(Run):
    """A Run without a model: every image gets ``probs`` (NaN ones for a broken model)."""

    def __init__(self, probs: list[float]) -> None:
        self.class_names = [f"c{i}" for i in range(len(probs))]
        self.probs = np.asarray(probs, np.float32)

    def predict(self, images, *, batch_size=256, resize="crop"):  # noqa: ANN001, ANN201
        return Prediction(np.tile(self.probs, (len(images), 1)), self.class_names)


def test_one_bad_file_never_stops_the_others(tmp_path: Path) -> None:
    why = hostile_files(tmp_path / "bad")
    for k in range(3):
        Image.fromarray(np.full((40, 50, 3), k * 40, np.uint8)).save(
            tmp_path / "bad" / f"ok{k}.png"
        )
    del why["script.eps"]  # not an image suffix: a folder search leaves it out
    results = _FixedRun([0.25, 0.75]).predict_files([tmp_path / "bad"], batch_size=4)
    by_name = {r.path.name: r for r in results}
    assert set(by_name) == set(why) | {"ok0.png", "ok1.png", "ok2.png"}
    for name, r in by_name.items():
        if name.startswith("ok"):
            assert r.error is None and r.prediction.labels == ["c1"]
        else:
            assert r.prediction is None and why[name] in r.error and "\n" not in r.error
    broken = _FixedRun([float("nan"), 1.0]).predict_files([tmp_path / "bad" / "ok0.png"])
    assert broken[0].prediction is None and "not numbers (NaN" in broken[0].error
    with pytest.raises(CifarlabError, match="batch_size must be a positive integer"):
        _FixedRun([1.0]).predict_files([tmp_path], batch_size=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of one epoch on a tiny fake CIFAR-10 (a few seconds): predict's CLI without the
    full data."""
    from cifarlab import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny-data")
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # md5 sums differ from the official files: fake data
        mp.setenv("CIFARLAB_CACHE", str(root / "cache"))
        cfg = TrainConfig(root=str(root), epochs=1, val_size=20, model="mlp", device="cpu")
        return train(cfg, out=tmp_path_factory.mktemp("tiny") / "run", progress=False)


def test_cli_predict_goes_on_past_bad_files_under_strict_utf8(
    tiny_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    why = hostile_files(folder / "bad")
    del why["script.eps"]  # not an image suffix: a folder search leaves it out
    Image.new("RGB", (60, 40), (200, 10, 10)).save(folder / "red.png")
    odd = os.fsencode(str(folder)) + b"/\xff.png"
    Image.new("RGB", (40, 40), (10, 10, 200)).save(os.fsdecode(odd))
    for gif in range(2):
        (folder / "bad" / f"m{gif}.gif").write_bytes(mutate(image_bytes("GIF", 2), gif, 8))
    env = {"PYTHONIOENCODING": "utf-8:strict"}
    r = run_cli("predict", str(tiny_run), str(folder), "--top-k", "50", env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{folder}/red.png " in r.stdout and f"{folder}/\\xff.png " in r.stdout
    assert "warning: --top-k 50 is more than the run's 10 classes; showing 10" in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    for name, reason in why.items():
        assert any(f"{folder}/bad/{name}: " in e and reason in e for e in errors), name
    failed = int(re.search(r"(\d+) of (\d+) files could not be predicted", r.stderr)[1])
    assert len(why) <= failed <= len(why) + 2 and len(errors) == failed  # the GIFs may decode
    assert f"of {len(why) + 4} files could not be predicted" in r.stderr

    r = run_cli("predict", str(tiny_run), str(folder), "--json", env=env, timeout=120)
    rows = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert r.returncode == 1 and len(rows) == len(why) + 4
    assert {row["file"] for row in rows if "label" in row} >= {f"{folder}/red.png",
                                                               f"{folder}/\\xff.png"}  # fmt: skip


def test_cli_predict_never_prints_nan(tiny_run: Path, tmp_path: Path) -> None:
    """A checkpoint whose weights are NaN: an error per file (or for the run), never NaN in
    the JSON."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    state = torch.load(broken / "best.pt", weights_only=True)
    for value in state["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(state, broken / "best.pt")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    r = run_cli("predict", str(broken), str(tmp_path / "x.png"), "--json", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error: " in r.stderr
    if r.stdout.strip():  # valid JSON: no NaN, no Infinity
        rows = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
        assert "not numbers (NaN or infinite)" in rows[0]["error"]


@pytest.mark.parametrize("args,message", [
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--top-k", "-1"], "--top-k must be at least 1, got -1"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 65536, got 0"),
    (["--batch-size", str(10**12)], "--batch-size must be between 1 and 65536, got 10"),
])  # fmt: skip
def test_cli_predict_options_are_range_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    from cifarlab.cli import main

    assert main(["predict", str(tmp_path / "no-run"), str(tmp_path), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_long_names_are_shown_whole() -> None:
    from cifarlab.predict import shown

    long = "/tmp/" + "a_rather_long_folder_name/" * 12 + "x.png"
    assert shown(long) == long


def test_to_rgb_applies_the_exif_rotation_without_touching_the_callers_image() -> None:
    """An EXIF orientation of 6 (rotate 90°) gives a rotated RGB image; the image handed in
    keeps its size and tag (the Python API passes callers' own images); without a tag the RGB
    image itself is returned, not a copy."""
    from PIL import Image

    from cifarlab.predict import ORIENTATION, to_rgb

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :5] = 255  # a white band on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[ORIENTATION] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    tagged = Image.open(io.BytesIO(buf.getvalue()))
    out = to_rgb(tagged)
    assert out.size == (20, 40) and tagged.size == (40, 20)
    assert tagged.getexif().get(ORIENTATION) == 6
    assert np.asarray(out)[:5].mean() > 200  # the band is now at the top
    plain = Image.fromarray(arr)
    assert to_rgb(plain) is plain
