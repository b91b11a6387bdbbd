"""The segmenter panel's class choice: what its "classes from" settings mean as a class spec
(:func:`napari_histoexpr.segment.classes.class_spec`)."""

from __future__ import annotations

from ..errors import HistoExprError
from ..segment.classes import class_spec

CLASS_SOURCES = ("genes", "leiden clusters", "k-means clusters", "spot labels (clusters file)")


def class_spec_of(source: str, genes: str, quantile: float, resolution: float, k: int) -> dict:
    """The class spec of the panel's settings (genes: comma-separated names)."""

    if source == CLASS_SOURCES[0]:
        names = [g.strip() for g in (genes or "").split(",") if g.strip()]
        if not names:
            raise HistoExprError("name at least one gene, e.g. ERBB2,COL1A1")
        return class_spec("genes", genes=names, quantile=float(quantile))
    if source == CLASS_SOURCES[1]:
        return class_spec("clusters", method="leiden", resolution=float(resolution))
    if source == CLASS_SOURCES[2]:
        return class_spec("clusters", method="kmeans", n_clusters=int(k))
    return class_spec("column")
