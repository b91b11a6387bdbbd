"""The section open in a viewer, shared by every panel: which layers hold the slide and the spots,
the core objects behind them (a SlidePyramid, an AnnData) and the section they came from.

The "Slide & spots" panel (or the reader) opens a section; the other panels find it here instead of
re-reading files. Layers are found by the key stored in ``metadata['histoexpr']['key']``.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from ..errors import HistoExprError
from ..io.manifest import Section
from ..layerdata import slide_layer_data
from ._annotations import watch_viewer
from .layers import find_layer, upsert_layer

SLIDE_KEY = "slide"
SPOTS_KEY = "spots"

# core objects behind the layers this plugin made; weak, so removing a layer frees them
_CORE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attach_core(layer, obj) -> None:
    _CORE[layer] = obj


def core_of(layer):
    return _CORE.get(layer) if layer is not None else None


class Session:
    """The open section of one viewer (a thin view over its layers; holds no state of its own)."""

    def __init__(self, viewer):
        self.viewer = viewer
        watch_viewer(viewer)  # drawn regions are autosaved whichever panel or reader made their layer

    @property
    def slide_layer(self):
        return find_layer(self.viewer, SLIDE_KEY)

    @property
    def spots_layer(self):
        return find_layer(self.viewer, SPOTS_KEY)

    def slide(self):
        """The open slide's pyramid (re-opened from the layer's path if it came from elsewhere)."""
        layer = self.slide_layer
        pyr = core_of(layer)
        if pyr is None and layer is not None:
            from ..io.slides import open_slide

            info = layer.metadata["histoexpr"]
            pyr = open_slide(info["path"], mpp=info.get("mpp"))
            attach_core(layer, pyr)
        return pyr

    def spots(self):
        """The open spots' AnnData, or ``None``."""
        return core_of(self.spots_layer)

    def require_slide(self):
        pyr = self.slide()
        if pyr is None:
            raise HistoExprError("open a slide with the 'Slide & spots' panel first")
        return pyr

    def require_spots(self):
        adata = self.spots()
        if adata is None:
            raise HistoExprError("open the measured spots with the 'Slide & spots' panel first")
        return adata

    def spot_size_um(self, default: float = 55.0) -> float:
        import numpy as np

        layer = self.spots_layer
        return float(np.mean(layer.size)) if layer is not None and len(layer.size) else default

    def show_slide(self, pyr, files: dict | None = None):
        """Add or update the slide layer; ``files`` (image, spots, counts, mpp) names the section."""

        layer = upsert_layer(self.viewer, slide_layer_data(pyr), SLIDE_KEY)
        attach_core(layer, pyr)
        if files and files.get("spots"):
            layer.metadata["histoexpr"]["section"] = {k: (str(v) if v is not None else None)
                                                      for k, v in files.items()}
        return layer

    def show_spots(self, adata, layer_data: tuple):
        layer = upsert_layer(self.viewer, layer_data, SPOTS_KEY)
        attach_core(layer, adata)
        return layer

    def section(self, name: str = "viewer"):
        """The open section (slide + spots files) as a manifest Section, or ``None``."""

        layer = self.slide_layer
        info = (layer.metadata.get("histoexpr", {}) if layer is not None else {}).get("section")
        if not info or not info.get("image") or not info.get("spots"):
            return None
        return Section(section=Path(info["image"]).stem or name, patient="", image=Path(info["image"]),
                       spots=Path(info["spots"]), counts=Path(info["counts"]) if info.get("counts") else None,
                       mpp=float(info["mpp"]) if info.get("mpp") else None,
                       bin_um=float(info["bin_um"]) if info.get("bin_um") else None)
