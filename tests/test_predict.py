"""Using a trained run: images of every common kind, Run.predict and `cifarlab predict`
(export: test_export.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import load_run
from cifarlab.errors import CifarlabError
from cifarlab.predict import ImageError, as_uint8_batch, load_image, resize_to_32
from conftest import run_cli


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
