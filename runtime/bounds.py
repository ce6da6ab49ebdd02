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
              Classification adds a floor under that margin: the bootstrap sees no noise where
              no calibration row changes its answer (a policy that exits a few rows early can
              show relative 1.0 on every resample), yet on M new rows each changed answer moves
              the score by 1 / M. The floor takes the discordance rate (rows whose early answer
              differs from the full-depth answer) at its Clopper-Pearson upper limit q (level
              delta / 2) and requires target + z * sqrt(q / M) / full-depth score, z the
              (1 - delta / 2) normal quantile (`discordance_margin`). Policies that send no
              calibration row out early get no floor (they answer as full depth).
  binomial    exact and distribution-free (only exchangeability of old and new rows): along the
              fixed sequence each row's loss is replaced by its running maximum (a row counts as
              lost from the first candidate at which it disagreed), which makes the losses nested;
              choosing the last candidate with at most c losses among the n rows then misses
              (more than a of M new rows lost) exactly when, in the pooled order of first-loss
              positions, a + 1 new rows come before the (c + 1)-th calibration row: a
              hypergeometric tail, P(at most c calibration rows among the first a + c + 1 of
              n + M). The choice among thresholds is covered by that same event, so no further
              correction is needed. On a few hundred rows it may certify nothing but full depth
              for a target like 0.99: the exact answer, not a weakness of the test.
The bootstrap rests on its usual approximation; runtime/calib_eval.py measures how often the target then holds on unseen halves
of real dev sets (results/CALIBRATION.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
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
    rows are losses. losses: 0/1 [n], nested along the fixed sequence for new_rows < inf (pass the
    running maximum over the candidates tested so far, see the module docstring). The bound is
    1 - the upper limit of the loss rate (e.g. a lower bound on agreement): of the distribution, or
    of the new rows' share (its 1 - delta level)."""
    n, k = int(losses.size), int(np.sum(losses))
    est = 1.0 - k / max(n, 1)
    if math.isinf(new_rows):
        return BoundTest(binom_cdf(k, n, max_rate), 1.0 - clopper_pearson_upper(k, n, delta), est)
    m = int(new_rows)
    allowed = int(math.floor(m * max_rate + 1e-9))  # losses the target allows among m rows
    p = exchangeable_miss(k, n, m, allowed)
    worst = next((a for a in range(m + 1) if exchangeable_miss(k, n, m, a) <= delta), m)
    return BoundTest(p, 1.0 - worst / m, est)


def exchangeable_miss(c: int, n: int, m: int, allowed: int) -> float:
    """P(more than `allowed` of m new rows are lost | the chosen candidate is the last with at most c
    of n calibration rows lost), nested losses, exchangeable rows: the hypergeometric probability
    that at most c calibration rows are among the first allowed + c + 1 of the pooled n + m."""
    if allowed >= m:
        return 0.0
    return hypergeom_cdf(c, n + m, n, min(allowed + c + 1, n + m))


def hypergeom_cdf(x: int, total: int, good: int, draws: int) -> float:
    """P(X <= x), X ~ Hypergeometric(total, good, draws) (log-space, no scipy)."""
    lo, hi = max(0, draws - (total - good)), min(good, draws)
    if x < lo:
        return 0.0
    if x >= hi:
        return 1.0
    j = np.arange(lo, hi + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    lc = lambda a, b: lg(a + 1.0) - lg(b + 1.0) - lg(a - b + 1.0)  # noqa: E731  log C(a, b)
    lp = lc(float(good), j) + lc(float(total - good), draws - j) - lc(float(total), float(draws))
    w = np.exp(lp - lp.max())
    return float(min(1.0, w[: x - lo + 1].sum() / w.sum()))


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
             new_rows: float = math.inf, discordant: int | None = None, full_score: float | None = None
             ) -> BoundTest:
        """H: the relative score is below target: of the distribution (new_rows = inf), or as
        measured on new_rows new rows (two parts of delta / 2 each, see the module docstring).
        discordant (classification, rows whose early answer differs from the full-depth one; None:
        no floor) sets a floor under the new rows' margin (the module docstring)."""
        r = self.relative(pred)
        if math.isinf(new_rows) or not np.isfinite(estimate):
            p = (1 + int(np.sum(r < target))) / (len(r) + 1)
            return BoundTest(p, float(np.quantile(r, delta)), estimate)
        n = self.idx.shape[1]
        s = math.sqrt(n / new_rows)
        with np.errstate(invalid="ignore"):
            dev = float(np.quantile(r - estimate, delta / 2))  # the estimate's own low deviation
        margin = max(0.0, -s * dev) if np.isfinite(dev) else math.inf  # an M-row score's low deviation
        if discordant is not None and full_score and full_score > 0:
            margin = max(margin, discordance_margin(discordant, n, new_rows, delta / 2, full_score))
        p = min(1.0, 2 * (1 + int(np.sum(r < target + margin))) / (len(r) + 1))
        return BoundTest(p, float(np.quantile(r, delta / 2)) - margin, estimate)


def discordance_margin(discordant: int, n: int, new_rows: float, delta: float, full_score: float) -> float:
    """The least low deviation an M-row relative score is allowed for a classification policy
    whose answers differ from the full-depth ones on `discordant` of n calibration rows: the
    discordance rate at its Clopper-Pearson upper limit (level delta) q, and flips that cancel
    on average, give the new rows' score change a standard deviation of sqrt(q / M) (in score
    units; relative: divided by the full-depth score); the margin is its one-sided (1 - delta)
    normal quantile. With no discordant row on the calibration rows q is still about 3 / n (the
    rule of three), so a policy is never certified on rows that show it no risk."""
    q = clopper_pearson_upper(int(discordant), int(n), delta)
    return NormalDist().inv_cdf(1.0 - delta) * math.sqrt(q / float(new_rows)) / float(full_score)


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
