"""Ground truth drawn on the open slide for the segmenter panel: a Shapes layer of class polygons,
autosaved (atomically) to a GeoJSON sidecar on every change and restored from it."""

from __future__ import annotations

import numpy as np

from ..segment.annotations import load_regions, save_regions, sidecar_path
from .layers import find_layer

GT_KEY = "seg:truth"


def truth_layer(viewer, pyr, classes: list[str]):
    """The ground-truth Shapes layer, created from the slide's sidecar (restored regions) if absent.
    Returns ``(layer, classes including any restored ones, number of restored regions, sidecar)``."""
    import pandas as pd


    path = sidecar_path(pyr.path)
    layer = find_layer(viewer, GT_KEY)
    if layer is not None:
        return layer, classes, 0, path
    classes = list(classes) or ["region"]
    regions = load_regions(path) if path.exists() else []
    data = [np.asarray(p, float)[:, ::-1] * pyr.world_mpp for p, _ in regions]
    labels = [c for _, c in regions]
    classes += [c for c in dict.fromkeys(labels) if c not in classes]
    feats = pd.DataFrame({"class": pd.Categorical(labels, categories=classes)})
    layer = viewer.add_shapes(
        data or None, shape_type="polygon", name="ground truth", edge_width=4.0, face_color="transparent",
        edge_color="class" if labels else "yellow", features=feats if labels else None, units="µm",
        metadata={"histoexpr": {"key": GT_KEY, "kind": "annotations", "sidecar": str(path)}})
    if not labels:
        layer.features = pd.DataFrame({"class": pd.Categorical([], categories=classes)})
        layer.edge_color = "class"
    layer.mode = "add_polygon"
    return layer, classes, len(regions), path


def drawn_regions(viewer, pyr) -> list:
    """Drawn regions as ``(polygon level-0 (x, y), class)``."""
    layer = find_layer(viewer, GT_KEY)
    if layer is None or pyr is None:
        return []
    cls = layer.features["class"].astype(str).tolist() if "class" in layer.features else []
    return [(np.asarray(d)[:, -2:][:, ::-1] / pyr.world_mpp, c) for d, c in zip(layer.data, cls)]


def autosave(viewer, pyr) -> None:
    layer = find_layer(viewer, GT_KEY)
    if layer is not None:
        save_regions(layer.metadata["histoexpr"]["sidecar"], drawn_regions(viewer, pyr))
