"""The predicted-gene Image layers of the "Predicted expression" panel: one per gene, on the
predictor's grid (µm world), updated in place; re-shaped one layer per event-loop turn when the
model or grid changes; styled (colormap, opacity, percentile contrast) per gene."""

from __future__ import annotations

from ._common import timed
from .layers import find_layer


class GeneLayers:
    """For a panel with ``_viewer``, ``predictor``, ``raster``, ``selected_genes()``,
    ``predict_view()``, ``gui_timings`` and the style widgets ``_current``, ``_cmap``, ``_opacity``,
    ``_lo``, ``_hi``."""

    _layers_pending = False

    def _layers_then_predict(self, genes: list[str]):
        """Bring each gene layer to the new grid, one per turn of the event loop (napari takes ~20 ms
        per layer to take a new shape, scale and translate), then predict the view."""
        from qtpy.QtCore import QTimer

        pred = self.predictor
        self._layers_pending = True

        @timed
        def layer_step(self):
            if self.predictor is not pred:  # superseded by another model or grid
                self._layers_pending = False
                return
            if genes:
                self._gene_layer(genes.pop(0), create=True)
                QTimer.singleShot(0, lambda: layer_step(self))
            else:
                self._layers_pending = False
                self.predict_view()

        QTimer.singleShot(0, lambda: layer_step(self))

    def gene_layer(self, gene: str):
        return find_layer(self._viewer, f"pred:{gene}")

    def _gene_layer(self, gene: str, create: bool = False):
        from ..layerdata import grid_image_kwargs

        layer = self.gene_layer(gene)
        if layer is not None and layer.data.shape == self.raster.gene(gene).shape:
            return layer
        if not create:
            return None
        kw = grid_image_kwargs(self.predictor.grid, self.predictor.pyr.world_mpp, f"predicted: {gene}",
                               self._cmap.value, float(self._opacity.value),
                               {"key": f"pred:{gene}", "kind": "prediction", "gene": gene})
        if layer is not None:  # another model or grid: the same layer shows the new raster
            layer.data = self.raster.gene(gene)
            layer.scale, layer.translate = kw["scale"], kw["translate"]
            layer.metadata = kw["metadata"]
            return layer
        return self._viewer.add_image(self.raster.gene(gene), **kw)

    def _style_current(self, *_):
        g = self._current.value
        layer = self.gene_layer(g) if g else None
        if layer is not None:
            layer.opacity = float(self._opacity.value)
            layer.colormap = self._cmap.value
            self._contrast(layer, g)

    def _contrast(self, layer, gene, force: bool = True):
        from ..data.expression import percentile_limits

        lo, hi = percentile_limits(self.raster.gene(gene), self._lo.value, max(self._hi.value, self._lo.value + 0.5))
        old = layer.contrast_limits
        if force or abs(lo - old[0]) + abs(hi - old[1]) > 0.02 * max(hi - lo, 1e-6):
            layer.contrast_limits = (lo, hi)

    @timed
    def _refresh_layers(self, final: bool = True):
        """Redraw the visible gene layers; while tiles stream in (``final=False``) only their pixels
        (no thumbnail, extent or highlight: the raster's shape never changes) and contrast when it
        moved noticeably."""
        for g in self.selected_genes():
            layer = self._gene_layer(g)
            if layer is not None and layer.visible:  # napari refreshes a hidden layer when it is shown
                layer.refresh(thumbnail=final, extent=False, highlight=False)
                self._contrast(layer, g, force=final)
