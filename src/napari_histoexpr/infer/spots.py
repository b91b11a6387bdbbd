"""Predicting at the measured spots of a section — the one implementation used by ``evaluate``,
``predict --spots`` and the "Predicted expression" panel's comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnknownGeneError


@dataclass
class SpotPrediction:
    """Predicted and measured log1p-normalised expression at a section's spots (genes both have)."""

    section: str
    spot_ids: list[str]
    xy: np.ndarray  # (N, 2) level-0 (x, y)
    genes: list[str]
    pred: np.ndarray  # (N, G)
    meas: np.ndarray  # (N, G)
    patches: np.ndarray  # (N, px, px, 3), for baselines

    def pearson(self) -> np.ndarray:
        from ..metrics import pearson_columns

        return pearson_columns(self.pred, self.meas)

    def pearson_by_gene(self) -> dict[str, float | None]:
        from ..metrics import named_values

        return named_values(self.genes, self.pearson())


def predict_at_spots(model, pyr, adata, name: str = "section", min_tissue: float | None = None,
                     progress=None) -> SpotPrediction:
    """The model's prediction at every spot of ``adata`` on ``pyr`` with enough tissue under it
    (``min_tissue`` default: what the model was trained with) and the measured values."""
    from ..data.expression import shared_genes
    from ..data.sections import prepare_section

    genes = shared_genes(model.genes, adata)
    if not genes:
        raise UnknownGeneError(model.genes[0], [])
    if min_tissue is None:
        min_tissue = model.meta.get("training", {}).get("config", {}).get("min_tissue", 0.3)
    sd = prepare_section(name, pyr, adata, model.window_um, model.px, genes=genes, min_tissue=min_tissue,
                         transform=model.patch_transform(), progress=progress)
    pred = model.predict(sd.patches)[:, [model.genes.index(g) for g in genes]]
    return SpotPrediction(name, sd.spot_ids, sd.xy, genes, pred, sd.expr, sd.patches)
