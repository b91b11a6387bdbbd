"""Metrics shared by training, evaluation and the GUI (numpy; scipy for ranks)."""

from __future__ import annotations

import numpy as np


def pearson_columns(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``pred`` with the same column of ``true``; NaN where either is constant."""
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / den
    r = np.where(den > 1e-12 * max(1.0, float(np.abs(den).max(initial=0))), r, np.nan)
    return r


def named_values(names, values) -> dict[str, float | None]:
    """``{name: value}`` with NaN/inf as ``None`` (JSON-safe per-gene results)."""
    return {n: (float(v) if v is not None and np.isfinite(v) else None) for n, v in zip(names, values)}


def nanmean_or_none(values) -> float | None:
    """Mean of the finite values (``None`` entries skipped); ``None`` when there are none."""
    a = np.array([np.nan if x is None else x for x in values], float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


def summarise_pearson(per_section: dict[str, dict[str, float]], genes: list[str],
                      hvg50: list[str] | None = None) -> dict:
    """The ``summary`` block of ``report.json`` (see docs/formats.md).

    Each gene's score is the median of its r over sections (sections where it is undefined are
    skipped); genes never defined count as not > 0.
    """
    med = {}
    for g in genes:
        vals = [s[g] for s in per_section.values() if g in s and s[g] is not None and np.isfinite(s[g])]
        med[g] = float(np.median(vals)) if vals else float("nan")
    v = np.array([med[g] for g in genes], float)
    fin = v[np.isfinite(v)]
    hv = [med[g] for g in (hvg50 or []) if g in med and np.isfinite(med[g])]
    return {
        "genes": len(genes),
        "genes_r_pos": int((fin > 0).sum()),
        "genes_r_gt_0_5": int((fin > 0.5).sum()),
        "mean_r": float(fin.mean()) if len(fin) else float("nan"),
        "median_r": float(np.median(fin)) if len(fin) else float("nan"),
        "mean_r_hvg50": float(np.mean(hv)) if hv else float("nan"),
    }, med


def concordance_index(time, risk, event) -> float:
    """Harrell's censored C-index: over comparable pairs (the earlier time is an event), the fraction
    where the earlier one has the higher risk (ties in risk count 1/2)."""
    t = np.asarray(time, float)
    r = np.asarray(risk, float)
    e = np.asarray(event, bool)
    num = den = 0.0
    for i in np.nonzero(e)[0]:
        later = t > t[i]
        den += later.sum()
        num += (r[i] > r[later]).sum() + 0.5 * (r[i] == r[later]).sum()
    if den == 0:
        return float("nan")
    return float(num / den)


def kaplan_meier(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival: ``(times, S(t))`` at each distinct event time, after a first ``(0, 1)``
    (just before the first event time when events happen at time 0 or before)."""
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    ts = np.unique(t[e])
    surv, s = [1.0], 1.0
    for u in ts:
        at_risk = (t >= u).sum()
        s *= 1.0 - (e & (t == u)).sum() / at_risk
        surv.append(s)
    start = 0.0 if not len(ts) or ts[0] > 0 else np.nextafter(ts[0], -np.inf)
    return np.concatenate([[start], ts]), np.array(surv)


def logrank_test(time_a, event_a, time_b, event_b) -> tuple[float, float]:
    """Two-group log-rank test: ``(chi2 statistic, p-value)`` with 1 degree of freedom."""
    from math import erfc, sqrt

    t = np.concatenate([np.asarray(time_a, float), np.asarray(time_b, float)])
    e = np.concatenate([np.asarray(event_a, bool), np.asarray(event_b, bool)])
    g = np.concatenate([np.zeros(len(time_a), bool), np.ones(len(time_b), bool)])
    obs_minus_exp = var = 0.0
    for u in np.unique(t[e]):
        at = t >= u
        n, n_a = at.sum(), (at & ~g).sum()
        d = (e & (t == u)).sum()
        d_a = (e & (t == u) & ~g).sum()
        obs_minus_exp += d_a - d * n_a / n
        if n > 1:
            var += d * (n_a / n) * (1 - n_a / n) * (n - d) / (n - 1)
    if var <= 0:
        return 0.0, 1.0
    chi2 = obs_minus_exp ** 2 / var
    return float(chi2), float(erfc(sqrt(chi2 / 2)))


def _ranks(a: np.ndarray) -> np.ndarray:
    """Column-wise ranks with ties averaged (as scipy's ``rankdata``)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=0)


def spearman_mean(score: np.ndarray, target: np.ndarray) -> float | None:
    """Spearman's rho of ``score`` and ``target`` column by column (``(N, G)`` each; a column constant in
    either skipped), averaged over the columns; ``None`` when no column counts."""
    score, target = np.asarray(score, float), np.asarray(target, float)
    if len(score) < 3:
        return None
    rho = pearson_columns(_ranks(score), _ranks(target))
    rho = rho[np.isfinite(rho)]
    return float(rho.mean()) if len(rho) else None


def risk_coverage(confidence_order: np.ndarray, pred: np.ndarray, true: np.ndarray,
                  coverages=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> dict:
    """Mean over genes of Pearson r, and the mean absolute error, on the most confident fraction of the
    spots, for each coverage: ``confidence_order`` ranks the spots, most confident first (e.g.
    ``argsort`` of the mean uncertainty). Fractions below 10 spots are skipped."""
    out = {"coverage": [], "mean_r": [], "mae": []}
    for c in coverages:
        n = int(round(c * len(pred)))
        if n < 10:
            continue
        idx = np.asarray(confidence_order)[:n]
        r = pearson_columns(pred[idx], true[idx])
        out["coverage"].append(float(c))
        out["mean_r"].append(float(np.nanmean(r)) if np.isfinite(r).any() else None)
        out["mae"].append(float(np.abs(pred[idx] - true[idx]).mean()))
    return out
