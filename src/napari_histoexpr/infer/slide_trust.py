"""A slide's distance to what a model was trained on (headless; the panel, ``predict`` and ``evaluate``)."""

from __future__ import annotations

import numpy as np

from ..data.patches import sample_mask, tissue_fraction_map, tissue_mask
from ..models.trust import ood_summary

#: tissue windows a slide's score is taken over (a random subset of the slide's tissue windows)
WINDOWS = 256


def tissue_windows(pyr, window_um: float, n: int = WINDOWS, min_tissue: float = 0.5, seed: int = 0,
                   mask: tuple | None = None) -> np.ndarray:
    """Level-0 centres of up to ``n`` windows of ``window_um`` on a grid over the slide, each at least
    ``min_tissue`` tissue (a random subset, fixed by ``seed``, when there are more)."""
    m, ds = mask or tissue_mask(pyr)
    step = window_um / pyr.world_mpp
    h, w = pyr.level0_shape[:2]
    yy, xx = np.meshgrid(np.arange(step / 2, h, step), np.arange(step / 2, w, step), indexing="ij")
    c = np.stack([xx.ravel(), yy.ravel()], 1)
    c = c[sample_mask(tissue_fraction_map(m, ds, step / 2), ds, c) >= min_tissue]
    if len(c) > n:
        c = c[np.sort(np.random.default_rng(seed).choice(len(c), n, replace=False))]
    return c


def window_distances(model, pyr, centres: np.ndarray) -> np.ndarray:
    """The distance of each window's features to the model's training spots (the features read as the
    calibration read them: from the slide's dense feature map, or from each window's patch)."""
    import torch

    if model.trust.info.get("features") == "dense":
        feats = model.features_centres_dense(pyr, centres)
    else:
        feats = model.predict(model.read_patches(pyr, centres), features=True)
    with torch.inference_mode():
        return model.trust(torch.from_numpy(feats).to(model.device))[:, -1].float().cpu().numpy()


def slide_ood(model, pyr, n: int = WINDOWS, mask: tuple | None = None) -> dict:
    """:func:`~napari_histoexpr.models.trust.ood_summary` of ``n`` tissue windows of ``pyr`` (``None``
    figures and a message when the model was never calibrated)."""
    if getattr(model, "trust", None) is None:
        return {"ood_score": None, "ood_percentile": None, "outside": False,
                "message": "the model has no uncertainty calibration (histoexpr calibrate)"}
    centres = tissue_windows(pyr, model.window_um, n, mask=mask)
    d = window_distances(model, pyr, centres) if len(centres) else np.zeros(0)
    return ood_summary(d, model.trust.info)
