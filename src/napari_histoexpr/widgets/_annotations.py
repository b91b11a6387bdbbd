"""Ground truth drawn on the open slide: a Shapes layer of class polygons, autosaved (atomically) to a
GeoJSON sidecar on every change and restored from it; QuPath exports are added to it.

napari polygons have no holes, so a region is held as one shape per ring, with features ``class``,
``region`` (the region's id: its rings and parts share it), ``part`` (which polygon of a MultiPolygon)
and ``hole`` (see :func:`~napari_histoexpr.layerdata.regions_layer_data`). A shape drawn by hand has no
region id and is a region of its own. Every panel's session watches the viewer, so a ground-truth layer
is autosaved whichever panel or reader made it.
"""

from __future__ import annotations

import weakref

from ..io.qupath import QuPathObject
from ..layerdata import TRUTH_KEY, add_regions, regions_layer_data, regions_of
from ..segment.annotations import load_regions, save_regions, sidecar_path
from .layers import find_layer

GT_KEY = TRUTH_KEY
_WATCHED: "weakref.WeakSet" = weakref.WeakSet()  # ground-truth layers autosaved
_VIEWERS: "weakref.WeakSet" = weakref.WeakSet()  # layer lists watched for new ground-truth layers


def truth_layer(viewer, pyr, classes: list[str]):
    """The ground-truth Shapes layer, created from the slide's sidecar (restored regions) if absent.
    Returns ``(layer, classes including any restored ones, number of restored regions, sidecar)``."""
    path = sidecar_path(pyr.path)
    layer = find_layer(viewer, GT_KEY)
    if layer is not None:
        return layer, list(layer.features["class"].cat.categories), 0, path
    regions = load_regions(path) if path.exists() else []
    data, kwargs, _ = regions_layer_data(regions, pyr.world_mpp, path, list(classes))
    layer = viewer.add_shapes(data or None, **kwargs)
    layer.edge_color = "class"
    layer.mode = "add_polygon"
    watch_layer(layer)
    return layer, list(layer.features["class"].cat.categories), len(regions), path


def watch_layer(layer) -> None:
    """Autosave a ground-truth layer to its sidecar on every edit (once per layer; saves now too, so
    edits made before any panel watched it are kept)."""
    if layer in _WATCHED:
        return
    _WATCHED.add(layer)
    info = layer.metadata["histoexpr"]
    ref = weakref.ref(layer)

    def save(*_):
        lay = ref()
        if lay is not None:
            save_regions(info["sidecar"], regions_of(lay, float(info["world_mpp"])))

    layer.events.data.connect(save)
    layer.events.features.connect(save)
    save()


def watch_viewer(viewer) -> None:
    """Watch the viewer's ground-truth layers, now and as they are added (e.g. by the reader)."""
    layer = find_layer(viewer, GT_KEY)
    if layer is not None:
        watch_layer(layer)

    def inserted(event):
        lay = event.value
        if (getattr(lay, "metadata", None) or {}).get("histoexpr", {}).get("key") == GT_KEY:
            watch_layer(lay)

    if viewer.layers not in _VIEWERS:  # one watcher per viewer
        _VIEWERS.add(viewer.layers)
        viewer.layers.events.inserted.connect(inserted)


def set_draw_class(layer, cls: str) -> None:
    """The class of the next shape drawn (a region of its own)."""
    layer.feature_defaults = {"class": cls, "region": "", "part": 0, "hole": False}


def drawn_regions(viewer, pyr) -> list[QuPathObject]:
    """The regions of the viewer's ground-truth layer (level-0 (x, y)); see :func:`regions_of`."""
    layer = find_layer(viewer, GT_KEY)
    return [] if layer is None or pyr is None else regions_of(layer, pyr.world_mpp)


__all__ = ["GT_KEY", "truth_layer", "watch_layer", "watch_viewer", "set_draw_class", "add_regions",
           "drawn_regions", "regions_of"]
