"""The "Predicted expression" panel's side-by-side view: measured spots (left) and the predicted map
(right) of the display gene, each over the slide, in napari's grid mode: two viewboxes sharing one
camera, so panning or zooming one moves both. Each side has its own colour bar (its own scale) and its
layer's name as a legend. The other layers are hidden meanwhile and shown again when it is turned off.
Wiring only (napari's public grid, colour-bar and layer-name overlays)."""

from __future__ import annotations

from magicgui.widgets import CheckBox

from ..errors import HistoExprError
from ..layerdata import slide_layer_data, spots_layer_data
from .layers import find_layer, upsert_layer

COPY_KEY = "slide:side"  # the slide again, under the predicted map (the same pyramid: no second read)


class SideBySide:
    """For :class:`~napari_histoexpr.widgets.expression_view.ExpressionPanel` (``session``, ``gene_layer``,
    ``_current``, ``_fail``)."""

    _hidden: list | None = None  # layers hidden while side by side (shown again after)

    def _init_side(self):
        self._side = CheckBox(label="side by side (measured | predicted)", value=False)
        self._side.tooltip = ("Measured spots and the predicted map of the display gene in two linked views, "
                              "each with its own colour bar")
        self._side.changed.connect(lambda *_: self.side_by_side(bool(self._side.value)))
        self._current.changed.connect(lambda *_: self._side.value and self.side_by_side(True))
        return [self._side]

    def side_by_side(self, on: bool = True):
        """Show (or stop showing) measured | predicted for the display gene; returns the two layers."""
        viewer = self._viewer
        if not on:
            return self._end_side()
        try:
            gene = self._current.value
            pred = self.gene_layer(gene) if gene else None
            if pred is None:
                raise HistoExprError("predict the view first: side by side shows the display gene's map")
            pyr, adata = self.session.require_slide(), self.session.require_spots()
            if gene not in set(adata.var_names):
                raise HistoExprError(f"the measured spots have no {gene}")
        except HistoExprError as e:
            self._side.value = False
            self._fail(e)
            return None
        slide = self.session.slide_layer
        spots = self.session.show_spots(adata, spots_layer_data(adata, gene, "log1p", mpp=pyr.world_mpp))
        data, kw, kind = slide_layer_data(pyr, name="slide (predicted side)")
        copy = upsert_layer(viewer, (data, kw, kind), COPY_KEY)
        order = [slide, spots, copy, pred]
        if self._hidden is None:
            self._hidden = [ly for ly in viewer.layers if ly not in order and ly.visible]
        for ly in viewer.layers:
            ly.visible = ly in order
        viewer.layers.move_multiple([viewer.layers.index(ly) for ly in order], 0)  # grid (stride 2): 0-1 left
        spots.face_colorbar.visible = True
        pred.colorbar.visible = True
        for ly in (spots, pred):
            ly.name_overlay.visible = True
        grid = viewer.canvas.grid
        grid.stride, grid.shape, grid.spacing, grid.enabled = 2, (1, 2), 0.02, True
        return spots, pred

    def _end_side(self):
        viewer = self._viewer
        viewer.canvas.grid.enabled = False
        copy = find_layer(viewer, COPY_KEY)
        if copy is not None:
            viewer.layers.remove(copy)
        for ly in viewer.layers:
            if ly.metadata.get("histoexpr", {}).get("kind") in ("prediction", "spots"):
                ly.name_overlay.visible = False
        for ly in self._hidden or []:
            if ly in viewer.layers:
                ly.visible = True
        self._hidden = None
        return None
