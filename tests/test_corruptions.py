"""CIFAR-10-C corruptions: shapes, determinism, damage per severity, errors, and the building
blocks checked against scipy / colorsys / plain loops that follow the published code."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
from scipy import ndimage

from cifarlab.data import corruptions as C
from cifarlab.data.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    NOTES,
    SEVERITIES,
    corrupt,
)
from cifarlab.errors import CifarlabError

# Corruptions that draw nothing at random: the seed must not matter.
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
}


def synthetic_images(n: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """Natural-looking stand-ins: a colour ramp, two or three flat shapes (disks, bars),
    a smooth low-amplitude texture, slightly blurred. uint8 NHWC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b = rng.uniform(-1, 1, 2)
        ramp = (a * xx + b * yy - min(0, a) - min(0, b)) / (abs(a) + abs(b) + 1e-9)
        c0, c1 = rng.uniform(0.1, 0.9, (2, 3))
        img = c0 + (c1 - c0) * ramp[..., None]
        for _ in range(rng.integers(2, 4)):
            colour = rng.uniform(0, 1, 3)
            cy, cx = rng.uniform(0.2, 0.8, 2) * (size - 1)
            r = rng.uniform(0.12, 0.3) * size
            py, px = yy * (size - 1) - cy, xx * (size - 1) - cx
            if rng.random() < 0.5:
                mask = py**2 + px**2 <= r * r
            else:
                mask = (abs(py) <= r) & (abs(px) <= r * 0.6)
            img[mask] = colour
        texture = ndimage.zoom(rng.normal(0, 0.05, (8, 8, 3)), (size / 8, size / 8, 1), order=1)
        img = ndimage.gaussian_filter(img + texture, sigma=(0.6, 0.6, 0))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images()


def mean_psnr(clean: np.ndarray, noisy: np.ndarray) -> float:
    mse = ((clean.astype(np.float64) - noisy.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


# ---------------------------------------------------------------------------- the API


def test_names_families_severities() -> None:
    assert CORRUPTIONS == (
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    )
    assert set(FAMILIES) == set(CORRUPTIONS)
    assert set(FAMILIES.values()) == {"noise", "blur", "weather", "digital"}
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert isinstance(C.VERSION, int) and C.VERSION >= 1
    assert set(NOTES) <= set(CORRUPTIONS) and "frost" in NOTES and "motion_blur" in NOTES
    assert all(note and "\n" not in note for note in NOTES.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_input_untouched(name: str, images: np.ndarray) -> None:
    x = images[:8].copy()
    x.flags.writeable = False  # any write into the input raises
    for severity in SEVERITIES:
        out = corrupt(x, name, severity)
        assert out.shape == x.shape and out.dtype == np.uint8
        assert not np.shares_memory(out, x)
        assert np.array_equal(x, images[:8])
    # a single image, a non-contiguous batch, another (non-square) size
    assert corrupt(images[:1], name, 3).shape == (1, 32, 32, 3)
    assert corrupt(images[::5], name, 5).shape == images[::5].shape
    odd = synthetic_images(2, size=48, seed=3)[:, :40]
    assert corrupt(odd, name, 5).shape == (2, 40, 48, 3)


def test_a_larger_size_takes_the_separable_zoom() -> None:
    x = synthetic_images(2, size=72, seed=4)
    for name in ("zoom_blur", "fog", "glass_blur"):
        assert corrupt(x, name, 5).shape == x.shape


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_and_seeded(name: str, images: np.ndarray) -> None:
    x = images[:8]
    np.random.seed(1)
    a = corrupt(x, name, 4, seed=7)
    np.random.seed(2)  # the global legacy state plays no part
    np.random.random(10)
    b = corrupt(x, name, 4, seed=7)
    assert np.array_equal(a, b)
    other = corrupt(x, name, 4, seed=8)
    assert np.array_equal(a, other) == (name in DETERMINISTIC)
    # severities draw from their own streams (not one stream scaled)
    assert not np.array_equal(corrupt(x, name, 3, seed=7), a)


# ---------------------------------------------------------------------------- damage


def psnr_by_severity(images: np.ndarray, name: str) -> list[float]:
    return [mean_psnr(images, corrupt(images, name, s)) for s in SEVERITIES]


def check_trend(name: str, psnr: list[float]) -> None:
    """What the published tables imply for the damage (mean PSNR against the clean images)
    as the severity grows."""
    p1, p2, p3, p4, p5 = psnr
    shown = ", ".join(f"{v:.2f}" for v in psnr)
    assert max(psnr) < 50, f"{name}: some severity does nothing ({shown})"
    if name == "glass_blur":
        # c = (sigma, delta, iterations): (0.05,1,1) (0.25,1,1) (0.4,1,1) (0.25,1,2) (0.4,1,2).
        # More blur hides the swapped pixels (PSNR rises from 1 to 3); a second swap pass at
        # the same sigma does more damage: 4 below 2, 5 below 3.
        assert p4 < p2 - 0.5 and p5 < p3 - 0.5, f"{name}: {shown}"
        assert p1 < p3 and p4 < p5, f"{name}: {shown}"
    elif name == "frost":
        # c = (image weight, frost weight): (1,.2) (1,.3) (.9,.4) (.85,.4) (.75,.45). Past
        # severity 3 the image is darkened as much as the frost brightens it, so the mean
        # error shrinks while contrast is lost: severity 1 is the mildest, no order after.
        assert p1 > max(p2, p3, p4, p5) + 1, f"{name}: {shown}"
    elif name == "elastic_transform":
        # c = IMSIZE * (alpha, sigma, affine jitter): the affine jitter (a global warp, which
        # PSNR punishes most) shrinks from 0.08 to 0.03 of the image while the local elastic
        # displacement grows: by construction PSNR rises with severity.
        assert p1 < p5 - 1, f"{name}: {shown}"
        assert max(psnr) < 35, f"{name}: {shown}"
    else:
        # Non-increasing up to 0.5 dB: motion blur's severities 3 (radius 6, sigma 2) and 4
        # (radius 8, sigma 2) have the same effective kernel (taps past 6 weigh < 1e-3),
        # only their random angles differ; pixelate 0.9 → 0.85 (28 → 27 pixels) is close.
        for s in range(1, 5):
            assert psnr[s] <= psnr[s - 1] + 0.5, f"{name}: severity {s + 1}: {shown}"
        assert p5 < p1 - 2, f"{name}: {shown}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_damage_grows_with_severity_synthetic(name: str, images: np.ndarray) -> None:
    check_trend(name, psnr_by_severity(images, name))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_damage_grows_with_severity_real(
    name: str, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    check_trend(name, psnr_by_severity(test_images[0][:64], name))


def test_noise_statistics_match_the_table(images: np.ndarray) -> None:
    x = np.full((16, 32, 32, 3), 128, dtype=np.uint8)
    for s, sigma in zip(SEVERITIES, C._GAUSSIAN_NOISE, strict=True):
        diff = corrupt(x, "gaussian_noise", s).astype(float) - 128
        assert abs(diff.std() / 255 - sigma) < 0.05 * sigma
        # truncated like the original's np.uint8: half a level darker on average
        assert abs(diff.mean() + 0.5) < 5 * diff.std() / math.sqrt(diff.size)
    for s, amount in zip(SEVERITIES, C._IMPULSE_NOISE, strict=True):
        out = corrupt(x, "impulse_noise", s)
        assert abs(np.isin(out, (0, 255)).mean() - amount) < 0.15 * amount
    out = corrupt(x, "contrast", 5)  # a flat image keeps its mean
    assert np.array_equal(out, x)


# ---------------------------------------------------------------------------- errors


def one_line_error(call) -> str:  # noqa: ANN001 - a zero-argument callable
    with pytest.raises(CifarlabError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_errors_are_one_line_and_name_the_bad_value(images: np.ndarray) -> None:
    x = images[:2]
    message = one_line_error(lambda: corrupt(x, "gausian_noise", 1))
    assert "'gausian_noise'" in message and "gaussian_noise, shot_noise" in message
    assert "'a\\nb'" in one_line_error(lambda: corrupt(x, "a\nb", 1))
    for bad in (0, 6, 7, -1, 2.0, True, "3", None):
        message = one_line_error(lambda bad=bad: corrupt(x, "fog", bad))
        assert message.startswith("severity must be 1 to 5") and repr(bad) in message
    assert "-1" in one_line_error(lambda: corrupt(x, "fog", 1, seed=-1))
    assert "float32" in one_line_error(lambda: corrupt(x.astype(np.float32), "fog", 1))
    assert "(32, 32, 3)" in one_line_error(lambda: corrupt(x[0], "fog", 1))
    assert "(2, 32, 32, 4)" in one_line_error(
        lambda: corrupt(np.pad(x, ((0, 0),) * 3 + ((0, 1),)), "fog", 1)
    )  # noqa: E501
    assert "(0, 32, 32, 3)" in one_line_error(lambda: corrupt(x[:0], "fog", 1))
    assert "list" in one_line_error(lambda: corrupt(x.tolist(), "fog", 1))
    assert np.int64(3) in SEVERITIES and corrupt(x, "fog", np.int64(3)).shape == x.shape


# ---------------------------------------------------------------------------- building blocks


def clipped_zoom_reference(img: np.ndarray, factor: float) -> np.ndarray:
    """The published ``clipped_zoom`` (H×W×C), written again with scipy.ndimage.zoom."""
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(img[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim : trim + h, trim : trim + h]


def test_zoom_matches_scipy_zoom() -> None:
    x = np.random.default_rng(0).random((2, 32, 32, 3))
    factors = {z for table in C._ZOOM_BLUR for z in table} | {1.25, 1.75, 2.25}
    assert [len(t) for t in C._ZOOM_BLUR] == [7, 12, 16, 21, 26]  # numpy's float arange
    for z in sorted(factors):
        expected = np.stack([clipped_zoom_reference(im, z) for im in x])
        np.testing.assert_allclose(C._clipped_zoom(x, z), expected, atol=1e-12)


def test_zoom_blur_matches_the_published_sum() -> None:
    x = synthetic_images(3, seed=5)
    x01 = (x / 255.0).astype(np.float32)
    for s, factors in zip(SEVERITIES, C._ZOOM_BLUR, strict=True):
        ref = [
            (im + sum(clipped_zoom_reference(im, z) for z in factors)) / (len(factors) + 1)
            for im in x01
        ]
        expected = np.clip(np.stack(ref) * 255, 0, 255)
        diff = corrupt(x, "zoom_blur", s).astype(float) - expected
        assert np.all(diff < 1e-3) and np.all(diff > -1)  # truncated, as np.uint8 does


@pytest.mark.parametrize("mode", ["reflect", "mirror"])
def test_bilinear_matches_map_coordinates(mode: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((2, 9, 11, 3))
    rows = rng.uniform(-5, 14, (2, 9, 11))
    cols = rng.uniform(-5, 16, (2, 9, 11))
    expected = np.stack(
        [
            np.stack(
                [
                    ndimage.map_coordinates(img[n, :, :, c], [rows[n], cols[n]], order=1, mode=mode)
                    for c in range(3)
                ],
                axis=-1,
            )
            for n in range(2)
        ]
    )
    np.testing.assert_allclose(C._bilinear(img, rows, cols, mode), expected, atol=1e-12)


def motion_blur_reference(img: np.ndarray, radius: float, sigma: float, angle: float):  # noqa: ANN201
    """ImageMagick's MotionBlurImage as a plain loop: taps i < 2*ceil(radius)+1 weigh
    exp(-i²/2σ²), read (x + ceil(i cos a - 0.5), y + ceil(i sin a - 0.5)), edge pixels
    extended."""
    h, w, _ = img.shape
    width = 2 * math.ceil(radius) + 1
    weights = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)])
    weights /= weights.sum()
    a = math.radians(angle)
    taps = [
        (math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)) for i in range(width)
    ]
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            for wt, (dx, dy) in zip(weights, taps, strict=True):
                out[y, x] += wt * img[min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
    return out


def test_motion_blur_matches_imagemagick_semantics() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((5, 12, 14, 3)).astype(np.float32)
    angles = np.array([-44.0, 10.0, 30.0, -100.5, 170.0])
    got = C._motion_blur_batch(img, 6, 2.0, angles)
    expected = np.stack(
        [motion_blur_reference(im, 6, 2.0, a) for im, a in zip(img, angles, strict=True)]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("delta", [1, 2])
def test_glass_swaps_follow_the_published_loop(delta: int) -> None:
    """The published line ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` run as written, on numpy
    arrays: its right side is two views, so it copies the partner's pixel, it does not swap."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)
    count = len(C._glass_positions(12, 10, delta))
    offsets = rng.integers(-delta, delta, size=(count, 2, 4))
    got = img.copy()
    C._glass_swaps(got, offsets, delta)
    expected = img.copy()
    for n in range(4):  # the published loop, one image at a time
        k = 0
        for h in range(12 - delta, delta, -1):
            for w in range(10 - delta, delta, -1):
                dx, dy = offsets[k, 0, n], offsets[k, 1, n]
                k += 1
                x = expected[n]
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
        assert k == count
    assert np.array_equal(got, expected)
    moved = got != img
    assert moved.any() and not np.array_equal(np.sort(got, axis=None), np.sort(img, axis=None))


def test_hsv_matches_colorsys() -> None:
    rng = np.random.default_rng(4)
    px = rng.random((300, 3))
    px[:40] = px[:40].round(1)  # ties between channels
    px[40:45] = 0
    px[45:50] = px[45:50, :1]  # greys
    hsv = C.rgb_to_hsv(px)
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in px], atol=1e-12)
    np.testing.assert_allclose(C.hsv_to_rgb(hsv), px, atol=1e-12)


def test_defocus_kernel_and_plasma() -> None:
    for radius, blur in C._DEFOCUS_BLUR:
        k = C._disk_kernel(radius, blur)
        assert math.isclose(k.sum(), 1, rel_tol=1e-6) and np.allclose(k, k.T)
        assert np.allclose(k, k[::-1, ::-1]) and k.shape == ((3, 3) if radius < 1 else (5, 5))
    maps = C._plasma_fractal(np.random.default_rng(0), 4, 32, 2.0)
    assert maps.shape == (4, 32, 32) and np.allclose(maps.min(axis=(1, 2)), 0)
    assert np.allclose(maps.max(axis=(1, 2)), 1)
    assert not np.array_equal(maps[0], maps[1])


def test_frost_texture_is_bright_and_bluish() -> None:
    tex = C._frost_texture(np.random.default_rng(0), 16, 32, 32)
    assert tex.shape == (16, 32, 32, 3) and tex.min() >= 0 and tex.max() <= 255
    means = tex.mean(axis=(0, 1, 2))
    assert 90 < tex.mean() < 150 and means[0] < means[1] < means[2]
    assert tex.std(axis=(1, 2)).mean() > 20  # a texture, not a flat veil
