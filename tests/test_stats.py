"""cifarlab.evaluate.stats: summaries, Welch's t-test, the bootstrap, the power estimate and the
verdicts, checked against scipy, hand-computed numbers and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cifarlab.evaluate.stats import (
    BOOTSTRAP,
    MAX_RUNS,
    NO_TEST,
    WELCH,
    choose_method,
    difference,
    runs_needed,
    summarize,
)


def test_summary_by_hand() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.values) == (4, 2.5, (1.0, 2.0, 3.0, 4.0))
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # Σ(x − 2.5)² = 5, over n − 1 = 3
    # t(0.975, 3) = 3.182446305284263 (a table value), sd/√n = 0.6454972243679028
    half = 3.182446305284263 * 0.6454972243679028
    assert s.ci == pytest.approx((2.5 - half, 2.5 + half))
    assert half == pytest.approx(2.0542603)

    two = summarize([0.70, 0.72])  # sd 0.01414..., t(0.975, 1) = 12.706204736174704
    assert two.ci == pytest.approx((0.71 - 12.706204736174704 * 0.01, 0.71 + 0.12706204736))


def test_summary_of_one_run_has_no_spread() -> None:
    s = summarize([0.8])
    assert (s.n, s.mean, s.std, s.ci) == (1, 0.8, None, None)
    same = summarize([0.5, 0.5, 0.5])
    assert same.std == 0 and same.ci == (0.5, 0.5)


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[0.5, 0.6]], [float("inf")]])
def test_summary_refuses_what_is_not_a_list_of_numbers(bad: list) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy's, on a side without spread
@pytest.mark.parametrize(
    "a,b",
    [
        ([1.0, 2.0, 3.5], [2.0, 4.0, 6.0, 7.0]),
        ([0.781, 0.779, 0.785, 0.780, 0.783], [0.790, 0.786, 0.795, 0.789, 0.791]),
        ([0.5, 0.5, 0.5], [0.51, 0.53]),  # one side without spread: Welch still works
    ],
)
def test_welch_is_scipys(a: list[float], b: list[float]) -> None:
    d = difference(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)  # b − a
    ci = ref.confidence_interval()
    assert d.test == WELCH
    assert d.diff == pytest.approx(np.mean(b) - np.mean(a))
    assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert d.df == pytest.approx(ref.df, rel=1e-9)
    assert d.ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert d.distinguishable == (ref.pvalue < 0.05)


def test_welch_interval_by_hand() -> None:
    # a: mean 2, var 1 (n 3); b: mean 5, var 4 (n 3): se² = 1/3 + 4/3 = 5/3,
    # df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = (25/9) / (17/18) = 50/17
    d = difference([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert d.df == pytest.approx(50 / 17)
    half = sps.t.ppf(0.975, 50 / 17) * math.sqrt(5 / 3)
    assert d.ci == pytest.approx((3 - half, 3 + half))


def test_bootstrap_is_seeded_and_agrees_with_welch_on_normal_data() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.80, 0.01, 40), rng.normal(0.81, 0.01, 40)
    boot = difference(a, b, "bootstrap")
    assert boot.test == BOOTSTRAP and boot.df is None
    assert boot == difference(a, b, "bootstrap")  # the same resamples every time
    assert boot.ci != difference(a, b, "bootstrap", seed=1).ci
    welch = difference(a, b, "welch")
    assert boot.ci == pytest.approx(welch.ci, abs=0.001)
    assert boot.distinguishable and boot.p < 0.01
    # no resampled difference crosses 0: p is the smallest the resamples can show
    far = difference(a, b + 1, "bootstrap", resamples=999)
    assert far.p == pytest.approx(2 / 1000)


def test_auto_picks_the_bootstrap_only_for_many_runs_far_from_normal() -> None:
    rng = np.random.default_rng(2)
    skewed = rng.lognormal(0, 1.5, 30)
    normal = rng.normal(0, 1, 30)
    assert choose_method(normal, normal + 1) == WELCH
    assert choose_method(normal, skewed) == BOOTSTRAP
    assert choose_method(skewed[:10], normal[:10]) == WELCH  # too few to judge or resample
    assert choose_method(skewed[:10], normal[:10], "bootstrap") == BOOTSTRAP
    assert difference(normal, skewed).test == BOOTSTRAP
    with pytest.raises(ValueError, match="method must be one of"):
        choose_method(normal, normal, "mann-whitney")


@pytest.mark.parametrize("effect,cohen", [(0.2, 393), (0.5, 64), (0.8, 26), (1.0, 17)])
def test_runs_needed_matches_the_textbook_tables(effect: float, cohen: int) -> None:
    # Cohen (1988), table 2.4.1: n per group for 80 % power, two-sided α = 0.05
    assert abs(runs_needed(effect, 1.0) - cohen) <= 1
    assert runs_needed(-effect * 0.01, 0.01) == runs_needed(effect, 1.0)


def _exact_power(n: int, effect: float) -> float:
    """The power of a two-sided two-sample t-test with n per side (noncentral t)."""
    df = 2 * n - 2
    crit = sps.t.ppf(0.975, df)
    nc = effect * math.sqrt(n / 2)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


@pytest.mark.parametrize("effect", [0.7, 1.2, 2.5])
def test_runs_needed_is_the_smallest_n_with_80_percent_power(effect: float) -> None:
    n = int(runs_needed(effect, 1.0))
    assert _exact_power(n, effect) >= 0.795
    assert _exact_power(n - 1, effect) < 0.80


def test_runs_needed_gives_80_percent_detection_in_simulation() -> None:
    """Draw normal runs with a true difference of 1.5 sd; at the estimated n per side,
    Welch's t-test (as difference() makes it) sees the difference about 80 % of the time."""
    rng = np.random.default_rng(3)
    sd, diff = 0.004, 0.006  # accuracy-like numbers: 0.4 points of seed noise, 0.6 points apart
    n = int(runs_needed(diff, sd))
    sims = 4000
    a = rng.normal(0.80, sd, (sims, n))
    b = rng.normal(0.80 + diff, sd, (sims, n))
    p = sps.ttest_ind(b, a, axis=1, equal_var=False).pvalue
    rate = float((p < 0.05).mean())
    assert 0.77 <= rate <= 0.85, (n, rate)
    # and the function itself, on a few of them, says the same as scipy
    for k in range(5):
        d = difference(a[k], b[k])
        assert d.distinguishable == (p[k] < 0.05)


def test_no_difference_needs_infinitely_many_runs_and_a_tiny_one_too_many() -> None:
    assert runs_needed(0.0, 0.01) == math.inf
    assert runs_needed(1e-7, 0.01) == MAX_RUNS + 1
    assert runs_needed(0.05, 0.0) == 2
    with pytest.raises(ValueError):
        runs_needed(0.01, -1.0)


def _pts(x: float) -> str:
    return f"{100 * x:.2f}"


def test_verdicts() -> None:
    a = [0.781, 0.779, 0.785, 0.780, 0.783]
    clear = difference(a, [0.790, 0.786, 0.795, 0.789, 0.791])
    text = clear.verdict("fast", "fast-muon", _pts, "points")
    assert text.startswith("fast-muon is 0.86 points higher than fast (95 % CI +0.")
    assert "Welch's t-test p = 0.00" in text
    assert "distinguishable from seed noise with 5 runs per side" in text
    pooled = math.sqrt(
        (np.var(a, ddof=1) + np.var([0.790, 0.786, 0.795, 0.789, 0.791], ddof=1)) / 2
    )
    assert clear.noise_sd == pytest.approx(pooled) and clear.noise_from == "both"
    assert clear.runs_needed == runs_needed(clear.diff, pooled) == 4
    assert "takes about 4 runs per side (one run's sd 0.29 points)" in text

    noise = difference(a, [0.782, 0.780, 0.786, 0.778, 0.781])
    text = noise.verdict("a", "b", _pts, "points")
    assert "the interval includes 0" in text and "not distinguishable" in text
    assert f"takes about {int(noise.runs_needed)} runs per side" in text
    assert noise.runs_needed > 5

    lower = difference([0.8, 0.81], [0.7, 0.71, 0.69])
    assert lower.diff < 0 and "b is 10.50 points lower than a" in lower.verdict(
        "a", "b", _pts, "points"
    )
    assert "2 and 3 runs" in lower.verdict("a", "b", _pts, "points")


def test_one_run_per_side_is_never_tested() -> None:
    d = difference([0.78], [0.80])
    assert (d.test, d.ci, d.p, d.distinguishable, d.runs_needed) == (
        NO_TEST,
        None,
        None,
        None,
        None,
    )
    text = d.verdict("a", "b", _pts, "points")
    assert "b is 2.00 points higher than a" in text
    assert "no estimate of the seed noise" in text and "runs per side" not in text


def test_one_side_with_one_run_borrows_the_others_noise_and_says_so() -> None:
    d = difference([0.78, 0.79, 0.785], [0.80])
    assert d.test == NO_TEST and d.noise_from == "a" and d.noise_sd == pytest.approx(0.005)
    text = d.verdict("group", "run", _pts, "points")
    assert "one side is a single run" in text and "not tested" in text
    assert "if the other side is as noisy" in text and "takes about" in text


def test_sides_without_any_spread() -> None:
    d = difference([0.5, 0.5], [0.6, 0.6, 0.6])
    assert d.test == NO_TEST and d.runs_needed is None
    assert "no seed noise was seen" in d.verdict()
    same = difference([0.5, 0.6], [0.5, 0.6])
    assert same.diff == 0 and same.p == pytest.approx(1.0) and not same.distinguishable
    assert "b equals a" in same.verdict("a", "b") and "means are equal" in same.verdict("a", "b")
