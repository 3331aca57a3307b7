"""Statistics of repeated runs: is one set-up better than another, or is it seed noise?

A training run is one draw: its test accuracy moves with the seed (the initial weights, the order
of the batches, the augmentation). Comparing two set-ups honestly needs several runs of each and
three answers, which this module gives, from numpy and scipy only:

- :func:`summarize`: the mean of a side's runs, their sample standard deviation (``ddof=1``) and
  the 95 % t-interval of the mean (none for a single run: one run says nothing of the noise).
- :func:`difference`: mean(b) − mean(a) with its 95 % interval and a p-value, and which test
  gave them. The test is Welch's t-test (no equal-variance assumption; Welch–Satterthwaite
  degrees of freedom). A percentile bootstrap (the difference of resampled means, seeded) is
  used when asked for (``method="bootstrap"``), or by ``method="auto"`` when each side has at
  least :data:`BOOTSTRAP_MIN_RUNS` runs and one side's values are far from normal (Shapiro–Wilk
  p < 0.01): with fewer runs a bootstrap has too few distinct resamples to be better than the
  t-test (its interval is too narrow), and normality cannot be judged either, so the t-test is
  the honest choice for the 3–10 seeds people train.
- a verdict in words (distinguishable from seed noise at this n or not: the interval excludes 0)
  and a power estimate: about how many runs per side would detect a true difference of the
  observed size with 80 % power at α = 0.05, two-sided (:func:`runs_needed`: the normal
  approximation corrected with t quantiles, from the pooled standard deviation). A side with
  one run has no estimate of its noise, and the text says so rather than pretend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # two-sided: 95 % intervals
POWER = 0.80
RESAMPLES = 10_000  # bootstrap resamples
BOOTSTRAP_MIN_RUNS = 15  # per side, before method="auto" would pick the bootstrap
NOT_NORMAL_P = 0.01  # Shapiro–Wilk p below which a side counts as far from normal
MAX_RUNS = 100_000  # runs_needed reports "more than this" beyond it
METHODS = ("auto", "welch", "bootstrap")
WELCH = "Welch's t-test"
BOOTSTRAP = f"bootstrap ({RESAMPLES:,} resamples, percentile interval)"
NO_TEST = "none"


@dataclass(frozen=True)
class Summary:
    """One side's runs: ``n``, ``mean``, sample ``std`` (ddof=1) and the 95 % t-interval of the
    mean ``ci`` (both None when n < 2), and the ``values`` themselves."""

    values: tuple[float, ...]
    n: int
    mean: float
    std: float | None
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class Difference:
    """mean(b) − mean(a) and what can be said of it.

    ``test`` is :data:`WELCH`, :data:`BOOTSTRAP` or :data:`NO_TEST` (with ``ci``, ``p`` and
    ``distinguishable`` None, and ``reason`` saying why); ``df`` is Welch's degrees of freedom.
    ``noise_sd`` is the standard deviation of one run the power estimate used (pooled over
    both sides, or the one side that has several runs: ``noise_from`` says which), and
    ``runs_needed`` that estimate: runs per side for 80 % power against a true difference of
    this size (``math.inf`` when the difference is 0; None when no side has two runs)."""

    a: Summary
    b: Summary
    diff: float
    ci: tuple[float, float] | None
    p: float | None
    test: str
    df: float | None
    distinguishable: bool | None
    noise_sd: float | None
    noise_from: str  # "both", "a", "b" or "" (no estimate)
    runs_needed: float | None
    reason: str = ""

    def verdict(
        self,
        name_a: str = "A",
        name_b: str = "B",
        fmt: Callable[[float], str] = lambda x: f"{x:.4g}",
        unit: str = "",
    ) -> str:
        """The result in words: the difference, whether it stands out from seed noise at this
        n, and about how many runs per side it would take to see it. ``fmt`` writes a number
        (a difference or a standard deviation), ``unit`` follows it ("points")."""
        finding = self.finding(name_a, name_b, fmt, unit)
        return " ".join(s for s in (finding, self.power_text(fmt, unit)) if s)

    def finding(self, name_a: str, name_b: str, fmt: Callable[[float], str], unit: str = "") -> str:
        """The first sentence of :meth:`verdict`: the difference, its interval and test, and
        whether it stands out from seed noise."""
        d, u = self.diff, f" {unit}" if unit else ""
        how = "equals" if d == 0 else f"is {fmt(abs(d))}{u} {'higher' if d > 0 else 'lower'} than"
        said = f"{name_b} {how} {name_a}"
        runs = _runs_text(self.a.n, self.b.n)
        if self.ci is None:
            return f"{said}, {self.reason}."
        lo, hi = self.ci
        interval = (
            f"95 % CI {fmt_signed(lo, fmt)} to {fmt_signed(hi, fmt)}{u}, "
            f"{self.test} {p_phrase(self.p)}"
        )
        if self.distinguishable:
            return f"{said} ({interval}): distinguishable from seed noise with {runs}."
        return (
            f"{said}; the interval includes 0 ({interval}): not distinguishable from seed "
            f"noise with {runs}."
        )

    def power_text(self, fmt: Callable[[float], str], unit: str = "") -> str:
        """The second sentence of :meth:`verdict`: about how many runs per side would detect
        a true difference of this size (empty when no side has two runs)."""
        if self.noise_sd is None or self.runs_needed is None:
            return ""
        assumed = {
            "both": "",
            "a": " if the other side is as noisy",
            "b": " if the other side is as noisy",
        }[self.noise_from or "both"]
        u = f" {unit}" if unit else ""
        sd = f"one run's sd {fmt(self.noise_sd)}{u}{assumed}"
        if math.isinf(self.runs_needed):
            return f"The means are equal: no number of runs would tell them apart ({sd})."
        if self.runs_needed > MAX_RUNS:
            return (
                f"A true difference this small would take more than {MAX_RUNS:,} runs per side "
                f"to detect ({sd}): it is lost in the seed noise."
            )
        n = int(self.runs_needed)
        return (
            f"To detect a true difference of {fmt(abs(self.diff))}{u} with 80 % power at "
            f"α = 0.05 takes about {n} runs per side ({sd})."
        )


def fmt_signed(x: float, fmt: Callable[[float], str]) -> str:
    return ("−" if x < 0 else "+" if x > 0 else "") + fmt(abs(x))


def p_text(p: float | None) -> str:
    """A p-value for a table: 0.237, 0.0004, < 0.0001 (– for none)."""
    if p is None:
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float | None) -> str:
    """A p-value in a sentence: p = 0.237, p < 0.0001."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _runs_text(na: int, nb: int) -> str:
    return f"{na} runs per side" if na == nb else f"{na} and {nb} runs"


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty list of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the values must be finite numbers")
    return x


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean, sample standard deviation (ddof=1), n and the 95 % t-interval of the mean
    (mean ± t(0.975, n−1)·sd/√n); the sd and the interval are None for a single value."""
    x = _values(values)
    n, mean = int(x.size), float(x.mean())
    if n < 2:
        return Summary(tuple(x.tolist()), n, mean, None, None)
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(tuple(x.tolist()), n, mean, sd, (mean - half, mean + half))


def choose_method(a: np.ndarray, b: np.ndarray, method: str = "auto") -> str:
    """The test :func:`difference` uses: :data:`WELCH` or :data:`BOOTSTRAP` (``method``
    "welch" / "bootstrap" force one; "auto": the bootstrap only when each side has at least
    :data:`BOOTSTRAP_MIN_RUNS` runs and one is far from normal, Shapiro–Wilk p <
    :data:`NOT_NORMAL_P`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return WELCH if method == "welch" else BOOTSTRAP
    if min(a.size, b.size) < BOOTSTRAP_MIN_RUNS:
        return WELCH
    for x in (a, b):
        if np.ptp(x) > 0 and sps.shapiro(x).pvalue < NOT_NORMAL_P:
            return BOOTSTRAP
    return WELCH


def welch(a: np.ndarray, b: np.ndarray) -> tuple[tuple[float, float], float, float]:
    """Welch's t-test of mean(b) − mean(a): its 95 % interval, p (two-sided) and the
    Welch–Satterthwaite degrees of freedom (sides of ≥ 2 values, not both without spread)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    d = float(b.mean() - a.mean())
    p = float(2 * sps.t.sf(abs(d) / se, df))
    half = float(sps.t.ppf(1 - ALPHA / 2, df)) * se
    return (d - half, d + half), p, float(df)


def bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[tuple[float, float], float]:
    """Percentile bootstrap of mean(b) − mean(a): each side resampled with replacement
    ``resamples`` times (seeded); the 2.5 and 97.5 percentiles, and p = twice the smaller
    share of resampled differences on either side of 0 (the interval's inversion; at least
    2/(resamples + 1))."""
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, (resamples, a.size))].mean(1)
    mb = b[rng.integers(0, b.size, (resamples, b.size))].mean(1)
    d = mb - ma
    lo, hi = np.percentile(d, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (resamples + 1))
    return (float(lo), float(hi)), p


def runs_needed(diff: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """About how many runs per side a two-sided two-sample t-test at level ``alpha`` needs to
    detect a true difference ``diff`` with probability ``power``, when one run's standard
    deviation is ``sd``: n = 2·(z₁₋α/₂ + z_power)²·(sd/diff)², then the z quantiles replaced by
    t quantiles with 2n − 2 degrees of freedom until n settles (rounded up, at least 2), then
    checked against the test's exact power (noncentral t).
    ``math.inf`` for a difference of 0; above :data:`MAX_RUNS`, ``MAX_RUNS + 1``."""
    if sd < 0 or not math.isfinite(sd) or not math.isfinite(diff):
        raise ValueError("sd must be a finite number ≥ 0 and diff finite")
    if diff == 0:
        return math.inf
    if sd == 0:
        return 2.0
    effect = abs(diff) / sd
    n = 2 * (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) ** 2 / effect**2
    for _ in range(50):
        if n > MAX_RUNS:
            return float(MAX_RUNS + 1)
        df = max(2 * n - 2, 1.0)
        new = 2 * (sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) ** 2 / effect**2
        if abs(new - n) < 1e-6:
            break
        n = new
    n = max(2, math.ceil(n - 1e-9))
    # the approximation is a run short for large effects (d/sd ≳ 3): settle it on the exact
    # power of the t-test (noncentral t), a few steps at most
    while _power(n, effect, alpha) < power and n <= MAX_RUNS:
        n += 1
    while n > 2 and _power(n - 1, effect, alpha) >= power:
        n -= 1
    return float(n) if n <= MAX_RUNS else float(MAX_RUNS + 1)


def _power(n: int, effect: float, alpha: float) -> float:
    """The exact power of a two-sided two-sample t-test with n runs per side, for a true
    difference of ``effect`` standard deviations."""
    df = 2 * n - 2
    ncp = effect * math.sqrt(n / 2)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp))


def _noise(sa: Summary, sb: Summary) -> tuple[float | None, str]:
    """One run's standard deviation for the power estimate: pooled over both sides when both
    have several runs, else that of the side that has."""
    if sa.std is not None and sb.std is not None:
        pooled = ((sa.n - 1) * sa.std**2 + (sb.n - 1) * sb.std**2) / (sa.n + sb.n - 2)
        return math.sqrt(pooled), "both"
    if sa.std is not None:
        return sa.std, "a"
    if sb.std is not None:
        return sb.std, "b"
    return None, ""


def difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    method: str = "auto",
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Difference:
    """mean(b) − mean(a), its 95 % interval and p from the test :func:`choose_method` picks
    (Welch's t-test unless a bootstrap fits better), the verdict and the power estimate.

    No test is made when a side has a single run (its seed noise is unknown) or when neither
    side varies at all; ``reason`` says so and the verdict repeats it."""
    x, y = _values(a), _values(b)
    sa, sb = summarize(x), summarize(y)
    d = sb.mean - sa.mean
    noise_sd, noise_from = _noise(sa, sb)
    needed = None if noise_sd is None or noise_sd == 0 else runs_needed(d, noise_sd)
    common = dict(a=sa, b=sb, diff=d, noise_sd=noise_sd, noise_from=noise_from)
    none = dict(ci=None, p=None, test=NO_TEST, df=None, distinguishable=None)
    if sa.n < 2 or sb.n < 2:
        if sa.n < 2 and sb.n < 2:
            why = "but with one run per side there is no estimate of the seed noise, so whether "
            why += "this is more than noise cannot be told (train each with several seeds)"
        else:
            why = "but one side is a single run: its seed noise is unknown, so the difference "
            why += "is not tested (train it with several seeds)"
        return Difference(**common, **none, runs_needed=needed, reason=why)
    if sa.std == 0 and sb.std == 0:
        why = (
            "but every run of each side gave the same value: no seed noise was seen, so the "
            "difference is not tested (more seeds may show some)"
        )
        return Difference(**common, **none, runs_needed=None, reason=why)
    test = choose_method(x, y, method)
    df = None
    if test == WELCH:
        ci, p, df = welch(x, y)
    else:
        ci, p = bootstrap(x, y, resamples, seed)
    return Difference(
        **common,
        ci=ci,
        p=p,
        test=test,
        df=df,
        distinguishable=bool(ci[0] > 0 or ci[1] < 0),
        runs_needed=needed,
    )
