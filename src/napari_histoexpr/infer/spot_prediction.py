"""Predicting at the measured spots of a section — the one implementation used by ``evaluate``,
``predict --spots`` and the "Predicted expression" panel's comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.gene_values import log1p_normalised, shared_genes
from ..data.patches import extract_patches
from ..data.section_data import spot_diameter_um, spots_on_tissue
from ..errors import HistoExprError, UnknownGeneError
from ..io.visium_hd import comparison_spots
from ..metrics import named_values, pearson_columns, spearman_mean


@dataclass
class SpotPrediction:
    """Predicted and measured log1p-normalised expression at a section's spots (genes both have)."""

    section: str
    spot_ids: list[str]
    xy: np.ndarray  # (N, 2) level-0 (x, y)
    genes: list[str]
    pred: np.ndarray  # (N, G)
    meas: np.ndarray  # (N, G)
    patches: np.ndarray | None  # (N, px, px, 3) in patch mode or when asked (for baselines)
    mode: str = "patch"  # how the predictions were made
    scale: str = "spots"  # what was compared: the spots, or (Visium HD) bins summed over model windows
    spot_um: float | None = None  # side / diameter of what was compared, µm
    square: bool = False  # square footprints (Visium HD)
    #: (N, G) expected absolute error of each prediction (log1p units), with the model's uncertainty on
    uncertainty: np.ndarray | None = None
    distance: np.ndarray | None = None  # (N,) distance of each spot's features to the training spots

    def uncertainty_error_spearman(self) -> float | None:
        """Spearman's rho between the uncertainty and the absolute error at the spots, per gene (genes
        whose error or uncertainty is constant skipped), averaged over genes."""
        if self.uncertainty is None:
            return None
        return spearman_mean(self.uncertainty, np.abs(self.pred - self.meas))

    def pearson(self) -> np.ndarray:
        return pearson_columns(self.pred, self.meas)

    def pearson_by_gene(self) -> dict[str, float | None]:
        return named_values(self.genes, self.pearson())


def predict_at_spots(model, pyr, adata, name: str = "section", min_tissue: float | None = None,
                     mode: str = "dense", keep_patches: bool = False) -> SpotPrediction:
    """The model's prediction at every spot of ``adata`` on ``pyr`` with enough tissue under it
    (``min_tissue`` default: what the model was trained with) and the measured values.

    ``mode="dense"`` pools one feature map of the section over each spot's window
    (:func:`~napari_histoexpr.models.dense.dense_at_centres`); ``"patch"`` cuts and predicts every
    spot's patch as in training. ``keep_patches`` also returns the patches (for baselines).
    Visium HD bins are first summed over squares of the model's window
    (:func:`~napari_histoexpr.io.visium_hd.comparison_spots`), the scale then stated in ``scale``."""

    if mode not in ("dense", "patch"):
        raise HistoExprError(f"unknown prediction mode {mode!r}; use dense or patch")
    if mode == "dense" and (getattr(model, "subspot", None) or not all(b.exact for b in model.dense_branches())):
        # a window of a fractional number of feature cells: no exact dense pooling; a sub-spot model's
        # spot value is its cells' mean over the spot's disk on the spot's own patch, as in training
        mode = "patch"

    adata, scale = comparison_spots(adata, model.window_um, pyr.world_mpp)
    genes = shared_genes(model.genes, adata)
    if not genes:
        raise UnknownGeneError(model.genes[0], [])
    if min_tissue is None:
        min_tissue = model.meta.get("training", {}).get("config", {}).get("min_tissue", 0.3)
    xy = np.asarray(adata.obsm["spatial"], float)
    keep = spots_on_tissue(pyr, xy, model.window_um, min_tissue)
    ad = adata[keep]
    patches = None
    if mode == "patch" or keep_patches:
        patches = extract_patches(pyr, xy[keep], model.window_um, model.px, transform=model.patch_transform())
    info = adata.uns.get("histoexpr", {})
    spot_um = spot_diameter_um(pyr, adata)
    pred = model.predict_centres_dense(pyr, xy[keep]) if mode == "dense" else model.predict(patches, spot_um=spot_um)
    gi = [model.genes.index(g) for g in genes]
    unc = dist = None
    if getattr(model, "uncertainty", False):
        unc, dist = pred[:, [len(model.genes) + i for i in gi]], pred[:, 2 * len(model.genes)]
    return SpotPrediction(name, list(map(str, ad.obs_names)), xy[keep], genes, pred[:, gi],
                          log1p_normalised(ad, genes), patches, mode, scale, spot_um,
                          info.get("spot_shape") == "square", unc, dist)
