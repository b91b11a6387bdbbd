"""How far to trust an expression model's output: a per-location uncertainty for every gene and a
distance to the training sections, fitted once on the training spots and stored beside the model.

Both read the features the model's head reads (its pooled backbone or encoder features), so they cost
one small extra head on the maps the live view, ``predict`` and ``evaluate`` compute anyway:

- **error head** (the uncertainty): a linear map from the features' first ``ERROR_COMPONENTS``
  whitened principal components to each gene's absolute error, fitted on the model's own residuals at
  its training spots (in log1p units; floored at ``ERROR_FLOOR``). Of the methods measured on
  HER2ST (leave one section out, docs/trust.md) it ranked held-out spots by their error best; a
  bootstrap ensemble of heads and the feature-space distance ranked them far worse.
- **distance**: the mean Euclidean distance of a location's features (``DISTANCE_COMPONENTS``
  whitened principal components) to its ``K`` nearest training spots, divided by the mean over the
  training sections of each section's median distance to the *other* sections (so a section like the
  training ones is near 1). The uncertainty is multiplied by ``max(1, distance / far)``: beyond the
  training spots' own 95th percentile (``far``) the error head extrapolates and is not trusted as is.
- **slide score** (:func:`ood_summary`): the median distance over a slide's tissue; its percentile among
  the training sections' own held-out scores (each section's median, bootstrapped over its spots), and
  ``outside`` when it exceeds the largest of them by ``OUTSIDE_MARGIN``.

``trust.safetensors`` holds the tensors, ``trust.json`` the numbers above; both are written
atomically, the JSON last, with the tensors' SHA-256 (a mismatch is a named error). The heads that
apply them (torch) are :mod:`.trust_head`; this module needs numpy and scikit-learn only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..files import atomic_write_bytes, atomic_write_json

TENSORS, INFO = "trust.safetensors", "trust.json"
ERROR_COMPONENTS = 8
DISTANCE_COMPONENTS = 32
K = 8
BANK = 4096  # training spots kept for the distance (a random subset beyond that)
ERROR_FLOOR = 0.01
MIN_SPOTS = 24  # fewer training spots: no calibration (the model works without one)
OUTSIDE_MARGIN = 1.2
#: the names of the two kinds of extra output channels
UNCERTAINTY, DISTANCE = "uncertainty", "distance"


def uncertainty_channel(gene: str) -> str:
    """The output channel of ``gene``'s uncertainty."""
    return f"{gene} {UNCERTAINTY}"


def whitened_pca(F: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, projection)`` with ``(F - mean) @ projection`` the first ``n`` principal components of
    the standardised features, each of unit variance."""
    from sklearn.decomposition import PCA

    mu, sd = F.mean(0), F.std(0) + 1e-6
    pca = PCA(n_components=int(min(n, len(F) - 1, F.shape[1])), svd_solver="full").fit((F - mu) / sd)
    proj = pca.components_.T / sd[:, None] / np.sqrt(pca.explained_variance_ + 1e-12)[None, :]
    return (mu + (pca.mean_ * sd)).astype(np.float32), proj.astype(np.float32)


def knn_distance(z: np.ndarray, bank: np.ndarray, k: int = K, exclude_self: bool = False,
                 block: int = 2048) -> np.ndarray:
    """Mean distance of each row of ``z`` to its ``k`` nearest rows of ``bank``."""
    out = np.empty(len(z), np.float32)
    b2 = (bank.astype(np.float64) ** 2).sum(1)
    for s in range(0, len(z), block):
        q = z[s:s + block].astype(np.float64)
        d2 = np.maximum((q ** 2).sum(1)[:, None] + b2[None, :] - 2 * q @ bank.T, 0.0)
        if exclude_self:
            d2[d2 < 1e-10] = np.inf
        kk = min(k, d2.shape[1])
        out[s:s + block] = np.sqrt(np.partition(d2, kk - 1, axis=1)[:, :kk]).mean(1)
    return out


def spatial_groups(xy: np.ndarray) -> np.ndarray:
    """Four quadrants of one section (about its median spot): held-out groups when a model was trained
    on a single section."""
    xy = np.asarray(xy, float)
    return ((xy[:, 0] > np.median(xy[:, 0])).astype(int) * 2 + (xy[:, 1] > np.median(xy[:, 1])).astype(int))


def fit_trust(F: np.ndarray, pred: np.ndarray, truth: np.ndarray, groups: np.ndarray, seed: int = 0
              ) -> tuple[dict, dict]:
    """Tensors and info of the trust head from the training spots: features ``F`` (N, dim), the model's
    predictions ``pred`` and the measured values ``truth`` (N, genes, log1p), and each spot's section
    (``groups``; a single section is cut in quadrants by the caller, :func:`spatial_groups`)."""
    from sklearn.linear_model import Ridge

    F = np.asarray(F, np.float64)
    groups = np.asarray(groups)
    if len(F) < MIN_SPOTS:
        raise ModelFileError(f"{len(F)} training spots are too few to calibrate the uncertainty "
                             f"(at least {MIN_SPOTS})")
    mu_e, proj_e = whitened_pca(F, ERROR_COMPONENTS)
    resid = np.abs(np.asarray(pred, np.float64) - np.asarray(truth, np.float64))
    ridge = Ridge(alpha=10.0).fit((F - mu_e) @ proj_e, resid)
    mu_d, proj_d = whitened_pca(F, DISTANCE_COMPONENTS)
    z = ((F - mu_d) @ proj_d).astype(np.float32)
    # each section's spots against the other sections: what "held out, but like the training" looks like
    held = np.empty(len(z), np.float32)
    ids = np.unique(groups)
    for g in ids:
        m = groups == g
        held[m] = knn_distance(z[m], z[~m]) if len(ids) > 1 else knn_distance(z[m], z[m], exclude_self=True)
    section_medians = np.array([np.median(held[groups == g]) for g in ids])
    ref = float(section_medians.mean())
    rng = np.random.default_rng(seed)
    boot = [float(np.median(rng.choice(held[groups == g], (groups == g).sum()))) / ref
            for g in ids for _ in range(200)]
    bank = z if len(z) <= BANK else z[rng.choice(len(z), BANK, replace=False)]
    tensors = {"error_mean": mu_e, "error_proj": proj_e,
               "error_weight": np.ascontiguousarray(ridge.coef_.T, np.float32),
               "error_bias": ridge.intercept_.astype(np.float32),
               "distance_mean": mu_d, "distance_proj": proj_d, "bank": np.ascontiguousarray(bank)}
    info = {"method": "error head on whitened features + k-NN distance to the training spots",
            "error_components": int(proj_e.shape[1]), "distance_components": int(proj_d.shape[1]), "k": K,
            "reference_distance": ref, "far": float(np.quantile(held / ref, 0.95)),
            "section_scores": [float(s / ref) for s in section_medians],
            "section_score_bootstrap": sorted(boot), "outside_margin": OUTSIDE_MARGIN,
            "n_spots": int(len(z)), "n_groups": int(len(ids)), "error_floor": ERROR_FLOOR}
    return tensors, info


def save_trust(model_dir: str | os.PathLike, tensors: dict, info: dict) -> None:
    """Write ``trust.safetensors`` and ``trust.json`` into a model folder (atomically, JSON last)."""
    from safetensors.numpy import save

    blob = save({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()})
    atomic_write_bytes(Path(model_dir) / TENSORS, blob)
    atomic_write_json(Path(model_dir) / INFO, dict(info, sha256=hashlib.sha256(blob).hexdigest()))


def trust_info(model_dir: str | os.PathLike) -> dict | None:
    """``trust.json`` of a model folder, or ``None``."""
    p = Path(model_dir) / INFO
    return json.loads(p.read_text()) if p.is_file() else None


def ood_summary(distances: np.ndarray, info: dict) -> dict:
    """A slide's out-of-distribution figures from the distances of its tissue locations:
    ``ood_score`` (their median; the training sections' own held-out scores are near 1),
    ``ood_percentile`` (among the training sections' bootstrapped held-out scores), ``outside``
    (beyond the largest of them by the margin) and a sentence saying what it means."""
    d = np.asarray(distances, float)
    d = d[np.isfinite(d)]
    if not len(d):
        return {"ood_score": None, "ood_percentile": None, "outside": False, "message": "no tissue to score"}
    score = float(np.median(d))
    boot = np.asarray(info["section_score_bootstrap"], float)
    pct = float(100.0 * np.searchsorted(boot, score, side="right") / len(boot))
    top = max(info["section_scores"])
    outside = score > top * float(info.get("outside_margin", OUTSIDE_MARGIN))
    if outside:
        msg = (f"out of distribution (score {score:.2f}, training sections at most {top:.2f}): this slide is "
               "farther from the training sections than any of them was from the others; treat the maps as "
               "unreliable")
    else:
        msg = f"like the training sections (score {score:.2f}; theirs {min(info['section_scores']):.2f}-{top:.2f})"
    return {"ood_score": score, "ood_percentile": pct, "outside": bool(outside), "message": msg,
            "n_locations": int(len(d))}
