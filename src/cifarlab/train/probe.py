"""Measure this machine: how fast a model's training step runs in each precision and batch size.

Whether bfloat16 pays depends on the chip (AMX: 2-3x float32; AVX512-BF16 without AMX: 1.4-2x;
no native bf16: emulated, slower) and on the network, so cifarlab does not guess from CPU flags:
it times the real training step (forward, label-smoothed cross-entropy, backward, fused
Nesterov-SGD update) of the actual model on random input, for a second or two, and keeps the
result in the cache directory (``probe.json``), keyed by the machine, the thread count and the
torch version. ``precision="auto"`` (:func:`choose_precision`) and ``--budget``
(:mod:`cifarlab.train.budget`) read it; ``cifarlab doctor`` prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.data.cache import cache_dir
from cifarlab.files import atomic_write
from cifarlab.models import create_model
from cifarlab.models.conv_grad import use_shifted_weight_grad

PROBE_VERSION = 1
# CPU flags that decide how fast convolutions run here (shown by `cifarlab doctor`).
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
# A cached speed older than this is measured again (a machine's software and load drift).
MAX_AGE_DAYS = 30
# bf16 is chosen only when it is this much faster than float32 (a tie keeps float32's numerics).
BF16_MARGIN = 1.05
# How a bf16 step on a CPU may take its small maps' weight gradients: PyTorch's (oneDNN's)
# convolution backward, or matrix products (models/conv_grad.py). "matmul" is used only when
# its step is this much faster: a tie keeps the library's kernel.
WEIGHT_GRADS = ("conv", "matmul")
MATMUL_MARGIN = 1.03


def machine_info() -> dict[str, Any]:
    """The CPU as Linux describes it (model name, family/model, the flags that matter), cores,
    threads and torch version; on other systems what ``platform`` knows."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "family": None,
        "model": None,
        "flags": [],
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    info["cpu"] = fields.get("model name", info["cpu"])
    info["family"] = int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None
    info["model"] = int(fields["model"]) if fields.get("model", "").isdigit() else None
    flags = set(fields.get("flags", "").split())
    info["flags"] = [f for f in FLAGS_OF_INTEREST if f in flags]
    return info


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line: ``AMD EPYC (family 25, model 17), 2 cores, flags avx2 avx512_bf16 ...``."""
    m = info or machine_info()
    fam = f" (family {m['family']}, model {m['model']})" if m["family"] is not None else ""
    flags = " ".join(m["flags"]) or "none of " + "/".join(FLAGS_OF_INTEREST)
    return f"{m['cpu']}{fam}, {m['cores']} cores, {m['threads']} threads, flags: {flags}"


def machine_key(device: torch.device) -> str:
    """What a cached speed belongs to: the CPU (name, family, model, flags), threads, torch."""
    if device.type != "cpu":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        text = f"{device.type}|{name}|{torch.__version__}"
    else:
        m = machine_info()
        text = (
            f"cpu|{m['cpu']}|{m['family']}|{m['model']}|{','.join(m['flags'])}|"
            f"{m['threads']}|{m['torch']}"
        )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Speed:
    """One measured configuration."""

    model: str
    batch_size: int
    precision: str  # fp32 | bf16
    channels_last: bool
    images_per_s: float
    step_seconds: float
    measured: str  # ISO date-time
    cached: bool = False
    # bf16 on a CPU: the weight gradients the faster step took ("conv" or "matmul") and each
    # way's images/s; "conv" alone where there was nothing to choose
    weight_grad: str = "conv"
    weight_grad_speeds: dict[str, float] | None = None

    @property
    def label(self) -> str:
        grads = ", weight grads as matmuls" if self.weight_grad == "matmul" else ""
        return (
            f"{self.precision}{' channels-last' if self.channels_last else ''}, "
            f"batch {self.batch_size}{grads}"
        )


def _cache_file() -> Path:
    return cache_dir() / "probe.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != PROBE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(new: dict[str, Any]) -> None:
    entries = {**_read_cache(), **new}  # re-read: another process may have added entries
    text = json.dumps({"version": PROBE_VERSION, "entries": entries}, indent=1) + "\n"
    with contextlib.suppress(OSError):  # a read-only cache costs a re-measurement, no more
        atomic_write(_cache_file(), lambda tmp: tmp.write_text(text))


def _entry_key(
    machine: str,
    model: str,
    model_args: dict,
    classes: int,
    batch: int,
    precision: str,
    channels_last: bool,
    weight_grad: str = "conv",
) -> str:
    args = json.dumps(model_args, sort_keys=True)
    key = f"{machine}|{model}|{args}|{classes}|{batch}|{precision}|cl={int(channels_last)}"
    return key if weight_grad == "conv" else f"{key}|wg={weight_grad}"


def _make_step(
    model_name: str,
    model_args: dict,
    classes: int,
    batch: int,
    precision: str,
    channels_last: bool,
    device: torch.device,
    build: Callable[[], nn.Module] | None = None,
    weight_grad: str = "conv",
):  # noqa: ANN202
    """The training step to time, or None when ``weight_grad="matmul"`` changes nothing in
    this model (it has no convolution that can take it)."""
    gen = torch.Generator().manual_seed(0)
    model = (build() if build else create_model(model_name, classes, **model_args)).to(device)
    if weight_grad == "matmul" and not use_shifted_weight_grad(model):
        return None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    kernel = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True, **kernel)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    bf16 = precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def measure(
    model: str,
    *,
    num_classes: int = 10,
    model_args: dict | None = None,
    batch_sizes: tuple[int, ...] = (256,),
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    channels_last: bool = True,
    device: torch.device | str = "cpu",
    seconds: float = 0.5,
    max_steps: int = 4,
    use_cache: bool = True,
    build: Callable[[], nn.Module] | None = None,
) -> list[Speed]:
    """Images/s of ``model``'s training step for each batch size and precision.

    Each configuration is warmed up (one step), then its steps are timed, the configurations
    taking turns (so a change in the machine's load hits all of them alike) until each has run
    ``seconds`` (and at least 2 steps) or ``max_steps`` steps; the fastest step counts, as in
    ``timeit``: another process on the machine can only make a step slower. Cached results (same
    machine, threads and torch) are returned without measuring unless ``use_cache=False``.
    ``build`` makes the model instead of ``create_model(model)`` (a model passed to train()).
    """
    device = torch.device(device)
    model_args = model_args or {}
    machine = machine_key(device)
    cache = _read_cache() if use_cache else {}
    now = time.time()
    results: dict[tuple[int, str, str], Speed] = {}
    todo = []
    for b in batch_sizes:
        for p in precisions:
            grads = WEIGHT_GRADS if p == "bf16" and device.type == "cpu" else ("conv",)
            keys = {
                g: _entry_key(machine, model, model_args, num_classes, b, p, channels_last, g)
                for g in grads
            }
            hits = {g: _cached_speed(cache.get(k), now) for g, k in keys.items()}
            if hits["conv"] is not None and all(
                hit is not None or cache.get(keys[g]) == NOTHING_TO_CHOOSE
                for g, hit in hits.items()
            ):
                for g, hit in hits.items():
                    if hit is not None:
                        results[(b, p, g)] = Speed(
                            model, b, p, channels_last, *hit, cached=True, weight_grad=g
                        )
            else:
                todo += [(b, p, g, k) for g, k in keys.items()]
    if todo:
        with torch.random.fork_rng(devices=[]):  # the caller's seeded generator stays as it was
            _measure(
                todo,
                results,
                model,
                model_args,
                num_classes,
                channels_last,
                device,
                seconds,
                max_steps,
                now,
                build,
            )
    return [_faster(results, b, p) for b in batch_sizes for p in precisions]


# What the cache holds for a way of computing weight gradients that this model cannot take.
NOTHING_TO_CHOOSE = {"nothing_to_choose": True}


def _faster(results: dict[tuple[int, str, str], Speed], batch: int, precision: str) -> Speed:
    """The speed of (batch, precision) with the weight gradients that made its step faster
    ("matmul" only by ``MATMUL_MARGIN``), each way's images/s recorded in it."""
    conv = results[(batch, precision, "conv")]
    matmul = results.get((batch, precision, "matmul"))
    if matmul is None:
        return conv
    speeds = {"conv": conv.images_per_s, "matmul": matmul.images_per_s}
    chosen = matmul if matmul.images_per_s >= MATMUL_MARGIN * conv.images_per_s else conv
    return dataclasses.replace(chosen, weight_grad_speeds=speeds)


def _cached_speed(hit: Any, now: float) -> tuple[float, float, str] | None:
    """(images/s, step seconds, when) of a cache entry, or None if missing, stale or damaged."""
    try:
        if now - float(hit["time"]) < MAX_AGE_DAYS * 86400 and float(hit["images_per_s"]) > 0:
            return float(hit["images_per_s"]), float(hit["step_seconds"]), str(hit["measured"])
    except (TypeError, KeyError, ValueError):
        pass
    return None


def _measure(
    todo: list,
    results: dict,
    model: str,
    model_args: dict,
    num_classes: int,
    channels_last: bool,
    device: torch.device,
    seconds: float,
    max_steps: int,
    now: float,
    build: Callable[[], nn.Module] | None = None,
) -> None:
    """Time the configurations in ``todo`` (taking turns) into ``results`` and the cache."""
    torch.set_flush_denormal(True)
    steps = {}
    fresh: dict[str, Any] = {}
    for b, p, g, key in list(todo):
        step = _make_step(model, model_args, num_classes, b, p, channels_last, device, build, g)
        if step is None:  # nothing to choose for this model: remembered, not timed
            todo.remove((b, p, g, key))
            fresh[key] = NOTHING_TO_CHOOSE
            continue
        steps[(b, p, g)] = step
        step()  # warm-up: oneDNN builds its kernels at the first call
    times: dict[tuple[int, str, str], list[float]] = {(b, p, g): [] for b, p, g, _ in todo}
    spent = dict.fromkeys(times, 0.0)

    def more(c: tuple[int, str, str]) -> bool:
        return len(times[c]) < max_steps and (spent[c] < seconds or len(times[c]) < 2)

    while any(more(c) for c in times):
        for c in times:
            if more(c):
                t0 = time.perf_counter()
                steps[c]()
                dt = time.perf_counter() - t0
                times[c].append(dt)
                spent[c] += dt
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for b, p, g, key in todo:
        step_s = min(times[(b, p, g)])
        speed = Speed(model, b, p, channels_last, b / step_s, step_s, stamp, weight_grad=g)
        results[(b, p, g)] = speed
        fresh[key] = {
            "images_per_s": speed.images_per_s,
            "step_seconds": step_s,
            "measured": stamp,
            "time": now,
            "steps": len(times[(b, p, g)]),
        }
    _write_cache(fresh)


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    flags = machine_info()["flags"]
    return (
        "avx512_bf16" in flags
        or "amx_bf16" in flags
        or "AMX" in str(torch.backends.cpu.get_cpu_capability())
    )


def pick_precision(fp32: float, bf16: float) -> str:
    """bf16 if it trains ≥ 5 % faster, fp32 if fp32 is ≥ 5 % faster; in between (a tie, or a
    measurement blurred by a busy machine) the CPU's bf16 hardware decides."""
    if bf16 >= BF16_MARGIN * fp32:
        return "bf16"
    if fp32 >= BF16_MARGIN * bf16:
        return "fp32"
    return "bf16" if native_bf16() else "fp32"


@dataclass
class PrecisionChoice:
    """What ``precision="auto"`` decided, and the measurements it rests on."""

    precision: str  # fp32 | bf16
    reason: str
    speeds: list[Speed]
    probe_seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speeds"] = [asdict(s) for s in self.speeds]
        return d


def choose_precision(
    model: str,
    *,
    num_classes: int = 10,
    model_args: dict | None = None,
    batch_size: int = 256,
    channels_last: bool = True,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
    build: Callable[[], nn.Module] | None = None,
) -> PrecisionChoice:
    """``precision="auto"``: bf16 autocast if it trains this model measurably faster here.

    On a CPU both precisions are timed (or read from the cache) and :func:`pick_precision`
    decides. On CUDA, bf16 where the GPU computes it natively (compute capability
    ≥ 8, where it always wins); MPS trains in float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.get_device_capability(device)[0] >= 8
        return PrecisionChoice(
            "bf16" if native else "fp32",
            "CUDA compute capability ≥ 8 (native bf16)"
            if native
            else "this GPU has no native bf16",
            [],
            0.0,
        )
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"{device.type}: float32", [], 0.0)
    t0 = time.perf_counter()
    speeds = measure(
        model,
        num_classes=num_classes,
        model_args=model_args,
        batch_sizes=(batch_size,),
        channels_last=channels_last,
        device=device,
        use_cache=use_cache,
        build=build,
    )
    probe_seconds = time.perf_counter() - t0
    by = {s.precision: s for s in speeds}
    fp32, bf16 = by["fp32"].images_per_s, by["bf16"].images_per_s
    chosen = pick_precision(fp32, bf16)
    where = "cached probe" if all(s.cached for s in speeds) else f"probe {probe_seconds:.1f} s"
    layout = "channels-last, " if channels_last else ""
    reason = (
        f"{model}: bf16 {bf16:,.0f} images/s, fp32 {fp32:,.0f} images/s "
        f"({layout}batch {batch_size}, {where})"
    )
    if chosen == "bf16":
        reason += weight_grad_words(by["bf16"])
    return PrecisionChoice(chosen, reason, speeds, probe_seconds)


def weight_grad_words(speed: Speed) -> str:
    """``"; small maps' weight gradients as matmuls: 1.18× the convolution kernel's step"``,
    or nothing where there was no choice."""
    both = speed.weight_grad_speeds
    if not both:
        return ""
    ratio = both["matmul"] / both["conv"]
    if speed.weight_grad == "matmul":
        return f"; small maps' weight gradients as matmuls: {ratio:.2f}× the conv kernel's step"
    return f"; weight gradients by the conv kernel (as matmuls: {ratio:.2f}×)"


def choose_weight_grad(
    model: str,
    *,
    num_classes: int = 10,
    model_args: dict | None = None,
    batch_size: int = 256,
    channels_last: bool = True,
    use_cache: bool = True,
    build: Callable[[], nn.Module] | None = None,
) -> Speed:
    """For a bf16 run on a CPU: the bf16 step's speed with the weight gradients that made it
    faster here (``.weight_grad``), measured or from the cache."""
    (speed,) = measure(
        model,
        num_classes=num_classes,
        model_args=model_args,
        batch_sizes=(batch_size,),
        precisions=("bf16",),
        channels_last=channels_last,
        use_cache=use_cache,
        build=build,
    )
    return speed


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 0.5) -> float:
    """This machine's dense ``torch.mm`` throughput in FLOP/s for ``dtype`` (n×n by n×n,
    the median of repeated products over about ``seconds``): a ceiling that training's
    convolutions can approach but not pass."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)
