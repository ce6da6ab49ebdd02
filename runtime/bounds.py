"""Statistical tests behind calibration's guarantee (Learn then Test, Angelopoulos et al. 2021).

Each candidate policy is a hypothesis H_t: "on the distribution the rows come from, policy t
misses the target". A test gives a p-value for H_t from the calibration rows; fixed-sequence
testing walks the candidates from the most conservative to the most aggressive, rejecting H_t
while its p-value <= delta and stopping at the first that is not rejected. Every policy it keeps
then meets the target with probability >= 1 - delta (the family-wise error is at most delta;
no ordering assumption is needed, only that the order is fixed before looking at the rows).

Two tests:
  binomial    a 0/1 loss per row (the early answer differs from the full-depth answer, or a
              regression value moves by more than a tolerance): the exact binomial tail. A
              finite-sample valid p-value; the bound is the Clopper-Pearson lower limit.
  bootstrap   any score (accuracy, F1, Spearman) relative to the full-depth score on the same
              rows: a paired bootstrap (rows resampled once, both scores on each resample);
              p = (1 + #{resamples below target}) / (B + 1), the bound is the delta-quantile.
              Asymptotically valid (the bootstrap's usual caveat), paired so that the
              full-depth score's own noise cancels.

What "meets the target" means (`new_rows`): the score of the distribution itself (new_rows =
inf), or the score measured on a set of new_rows new rows, which has sampling noise of its own:
a policy exactly at the target on the distribution misses it on half of all finite sets. With
new_rows = M both noises are covered:
  bootstrap   in two parts of delta / 2 each. An M-row score falls below the distribution's by
              more than m = sqrt(n / M) * (the bootstrap's delta/2-quantile deviation of the
              n-row estimate) with probability <= delta / 2 (the new rows are independent of the
              choice), so each policy is tested at delta / 2 against target + m, and fixed-
              sequence testing keeps its family-wise guarantee for that raised target. p is
              reported doubled (compared with delta); the bound is an M-row score's.
  binomial    the number of disagreements among M new rows is beta-binomial (Jeffreys prior on
              the disagreement rate, updated with the n rows): p is its tail above what the
              target allows. (The two-part construction cannot certify even a policy that never
              leaves early for a target like 0.99 on a few hundred rows, so this one is
              predictive.)
Both rest on approximations (the bootstrap's; a prior, and no correction for the choice among
thresholds); runtime/calib_eval.py measures how often the target then holds on unseen halves
of real dev sets (results/CALIBRATION.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np

from .metrics import prepare_gold, score_batch

T = TypeVar("T")


@dataclass(frozen=True)
class BoundTest:
    """One hypothesis' outcome: reject H_t (the policy is certified) when p_value <= delta."""

    p_value: float
    bound: float  # lower confidence bound at level 1 - delta on the targeted quantity
    estimate: float  # point estimate on these rows


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), exact (log-space sum, no scipy)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    j = np.arange(k + 1, dtype=np.float64)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) for x in j])
    logt = logc + j * math.log(p) + (n - j) * math.log1p(-p)
    m = logt.max()
    return float(min(1.0, math.exp(m) * np.exp(logt - m).sum()))


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """The largest loss rate q with P(Binomial(n, q) <= k) >= delta: an upper (1 - delta) bound."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) >= delta:
            lo = mid
        else:
            hi = mid
    return lo


def binomial_test(losses: np.ndarray, max_rate: float, delta: float, new_rows: float = math.inf) -> BoundTest:
    """H: the loss rate exceeds max_rate (new_rows = inf), or: more than max_rate of new_rows new
    rows are losses. losses: 0/1 [n]. The bound is 1 - the upper limit of the loss rate (e.g. a
    lower bound on agreement): of the distribution, or of the new rows' share (its delta-quantile)."""
    n, k = int(losses.size), int(np.sum(losses))
    est = 1.0 - k / max(n, 1)
    if math.isinf(new_rows):
        return BoundTest(binom_cdf(k, n, max_rate), 1.0 - clopper_pearson_upper(k, n, delta), est)
    m = int(new_rows)
    allowed = int(math.floor(m * max_rate + 1e-9))  # losses the target allows among m rows
    pmf = beta_binomial_pmf(m, k + 0.5, n - k + 0.5)
    cdf = np.cumsum(pmf)
    p = float(max(0.0, 1.0 - cdf[allowed])) if allowed < m else 0.0
    q = int(np.searchsorted(cdf, 1.0 - delta))  # the (1 - delta)-quantile of the losses
    return BoundTest(p, 1.0 - min(q, m) / m, est)


def beta_binomial_pmf(m: int, a: float, b: float) -> np.ndarray:
    """P(L = j), j = 0..m, for L ~ BetaBinomial(m, a, b) [m + 1] (log-space, no scipy)."""
    if m < 1:
        raise ValueError(f"new_rows must be >= 1, got {m}")
    j = np.arange(m + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    logc = lg(m + 1.0) - lg(j + 1) - lg(m - j + 1)
    logb = lg(j + a) + lg(m - j + b) - lg(m + a + b) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    lp = logc + logb
    w = np.exp(lp - lp.max())
    return w / w.sum()


class PairedBootstrap:
    """Relative score (policy score / full-depth score) on B resamples of the same rows."""

    def __init__(self, metric: str, gold: np.ndarray, full_pred: np.ndarray, resamples: int = 1000, seed: int = 0):
        n = len(gold)
        rng = np.random.default_rng(seed)
        self.metric = metric
        self.idx = rng.integers(0, n, size=(resamples, n))  # [B, n]
        self.gold = prepare_gold(metric, gold[self.idx])
        self.full = score_batch(metric, full_pred[self.idx], self.gold, prepared=True)  # [B]

    def relative(self, pred: np.ndarray) -> np.ndarray:
        s = score_batch(self.metric, pred[self.idx], self.gold, prepared=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = s / self.full
        return np.where(self.full > 0, r, -np.inf)  # a resample whose full score is 0 proves nothing

    def test(self, pred: np.ndarray, target: float, delta: float, estimate: float,
             new_rows: float = math.inf) -> BoundTest:
        """H: the relative score is below target: of the distribution (new_rows = inf), or as
        measured on new_rows new rows (two parts of delta / 2 each, see the module docstring)."""
        r = self.relative(pred)
        if math.isinf(new_rows) or not np.isfinite(estimate):
            p = (1 + int(np.sum(r < target))) / (len(r) + 1)
            return BoundTest(p, float(np.quantile(r, delta)), estimate)
        s = math.sqrt(self.idx.shape[1] / new_rows)
        with np.errstate(invalid="ignore"):
            dev = float(np.quantile(r - estimate, delta / 2))  # the estimate's own low deviation
        margin = max(0.0, -s * dev) if np.isfinite(dev) else math.inf  # an M-row score's low deviation
        p = min(1.0, 2 * (1 + int(np.sum(r < target + margin))) / (len(r) + 1))
        return BoundTest(p, float(np.quantile(r, delta / 2)) - margin, estimate)


def fixed_sequence(candidates: Sequence[T], test: Callable[[T], BoundTest | None], delta: float
                   ) -> list[tuple[T, BoundTest]]:
    """Candidates rejected in order until the first whose p-value exceeds delta (or whose test
    returns None: refused outright). Returns the certified prefix with its tests."""
    kept = []
    for c in candidates:
        t = test(c)
        if t is None or not t.p_value <= delta:
            break
        kept.append((c, t))
    return kept
