"""The "QuPath" dock panel: import a QuPath GeoJSON export as drawn regions, and export what the viewer
shows as QuPath objects (drawn regions, the segmentation, spots with measured and predicted genes, the
predicted view's grid cells), in level-0 pixels of the open slide. Formats: docs/qupath.md."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from ..errors import GeoJSONError, HistoExprError
from ..infer.spot_prediction import SpotPrediction
from ..io.qupath import describe_skipped, label_map_objects, write_geojson
from ..layerdata import layer_grid
from ..models.trust import uncertainty_channel
from ..segment.annotations import read_regions
from ..segment.export import raster_objects, spot_objects, spot_prediction_objects
from . import _annotations as gt
from ._common import PanelMixin, notify_error
from ._session import Session, core_of
from .layers import find_layer
from .segmenter_panel import MAP_KEY

EXPORTS = ("drawn regions", "segmentation", "spots: measured + predicted", "predicted view: grid cells")


def _measurement(channel: str) -> str:
    """``predicted: GENE``, or ``uncertainty: GENE`` for a gene's uncertainty channel."""
    suffix = uncertainty_channel("")
    return f"uncertainty: {channel[:-len(suffix)]}" if channel.endswith(suffix) else f"predicted: {channel}"


class QuPathPanel(PanelMixin, Container):
    SETTINGS = {"import_file": "_in", "export": "_what", "export_file": "_out"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self.session = Session(viewer)
        self._in = FileEdit(label="QuPath GeoJSON", mode="r", filter="*.geojson *.json", nullable=True)
        self._import_btn = PushButton(text="Import as drawn regions")
        self._what = ComboBox(label="export", choices=list(EXPORTS), value=EXPORTS[0])
        self._out = FileEdit(label="to", mode="w", filter="*.geojson", nullable=True)
        self._export_btn = PushButton(text="Export to QuPath")
        self._status = Label(value="Import a QuPath export, or export objects for QuPath (File > Import objects).")
        super().__init__(widgets=[self._in, self._import_btn, self._what, self._out, self._export_btn, self._status])
        self._import_btn.changed.connect(lambda *_: self.import_geojson())
        self._export_btn.changed.connect(lambda *_: self.export())

    def _fail(self, e) -> None:
        self._status.value = f"error: {e}"
        notify_error(e)

    # -- import ----------------------------------------------------------------------------------------
    def import_geojson(self, path=None) -> int:
        """Add the annotations of a QuPath export to the ground truth (created from the slide's sidecar if
        absent; autosaved). Returns the number of regions added (0 on an error, which is notified)."""
        try:
            path = Path(path or self._in.value or "")
            if not path.is_file():
                raise GeoJSONError(f"choose a QuPath GeoJSON file to import (got {str(path) or 'none'})")
            pyr = self.session.require_slide()
            objs, skipped = read_regions(path)
            if not objs:
                what = describe_skipped(skipped) or "no objects"
                raise GeoJSONError(f"{path.name} has no annotations to import ({what})")
            layer, *_ = gt.truth_layer(self._viewer, pyr, [])
            n = gt.add_regions(layer, objs)
        except HistoExprError as e:
            self._fail(e)
            return 0
        holes = sum(len(p) - 1 for o in objs for p in o.parts)
        multi = sum(len(o.parts) > 1 for o in objs)
        extra = f"; left out {describe_skipped(skipped)}" if skipped else ""
        self._status.value = (f"imported {n} regions ({holes} holes, {multi} with several parts) from {path.name}; "
                              f"saved to {Path(layer.metadata['histoexpr']['sidecar']).name}{extra}")
        return n

    # -- export ----------------------------------------------------------------------------------------
    def objects(self, what: str) -> list:
        """The QuPath objects of ``what`` (one of the export choices) in the open viewer."""
        pyr = self.session.require_slide()
        if what == EXPORTS[0]:
            objs = gt.drawn_regions(self._viewer, pyr)
            if not objs:
                raise HistoExprError("no drawn regions (draw or import them first)")
            return objs
        if what == EXPORTS[1]:
            layer = find_layer(self._viewer, MAP_KEY)  # the segmenter panel's label map
            if layer is None:
                raise HistoExprError("no segmentation: segment the view or the slide in the segmenter panel first")
            stride, origin = layer_grid(layer, pyr.world_mpp)
            return label_map_objects(layer.data, layer.metadata["histoexpr"]["classes"], stride, origin,
                                     skip=(0,), mpp=pyr.world_mpp, simplify=0.25)
        if what == EXPORTS[2]:
            sp = next((core_of(ly) for ly in self._viewer.layers if isinstance(core_of(ly), SpotPrediction)), None)
            if sp is not None:
                return spot_prediction_objects(sp, pyr.world_mpp)
            return spot_objects(self.session.require_spots())  # measured only: no comparison made yet
        planes = {_measurement(ly.metadata["histoexpr"]["gene"]): ly for ly in self._viewer.layers
                  if ly.metadata.get("histoexpr", {}).get("kind") == "prediction" and not ly.multiscale}
        if not planes:
            raise HistoExprError("no predicted view: predict the view in the 'Predicted expression' panel "
                                 "(whole-slide predictions: histoexpr export --format geojson --level grid)")
        stride, origin = layer_grid(next(iter(planes.values())), pyr.world_mpp)
        return raster_objects({k: ly.data for k, ly in planes.items()}, stride, origin)

    def export(self, what: str | None = None, path=None) -> Path | None:
        """Write ``what`` (default: the panel's choice) to ``path`` (default: its file field) as QuPath
        GeoJSON, atomically. Returns the file, or None on an error (notified)."""
        what = what or self._what.value
        try:
            if not (path or self._out.value):
                raise HistoExprError("choose the file to export to")
            path = Path(path or self._out.value)
            if path.suffix.lower() not in (".geojson", ".json"):
                path = path.with_name(path.name + ".geojson")
            objs = self.objects(what)
            write_geojson(path, objs)
        except HistoExprError as e:
            self._fail(e)
            return None
        self._status.value = f"exported {len(objs)} objects ({what}) to {path.name}"
        return path
