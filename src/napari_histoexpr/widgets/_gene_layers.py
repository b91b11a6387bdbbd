"""The predicted-gene Image layers of the "Predicted expression" panel: one per gene, on the
predictor's grid (µm world), updated in place; given a new model's or grid's raster one napari
setter per event-loop turn; styled (colormap, opacity, percentile contrast) per gene."""

from __future__ import annotations

import time

from ..data.gene_values import percentile_limits
from ..layerdata import grid_image_kwargs
from ._common import timed
from .layers import find_layer

#: while a view's tiles stream in, redraws are at least this far apart (a new view's first tiles are
#: drawn at once): each redraw takes CPU from the model, and a dense view releases tiles after every block
REPAINT_GAP_S = 0.3


class GeneLayers:
    """For a panel with ``_viewer``, ``predictor`` and ``raster`` (its live view's,
    :class:`~napari_histoexpr.infer.live_view.LiveView`), ``shown_channels()`` (genes, uncertainties),
    ``predict_view()``, ``gui_timings`` and the style widgets ``_current``, ``_cmap``, ``_opacity``, ``_lo``,
    ``_hi``."""

    _pending_steps: list | None = None  # a new raster's layer steps not run yet (None: none under way)
    _last_repaint = 0.0  # when tiles streaming in were last drawn (0: the next tiles are drawn at once)

    def _init_repaint(self, parent):
        from qtpy.QtCore import QTimer

        self._repaint = QTimer(parent)  # tiles arriving together (a dense block) are drawn once
        self._repaint.setSingleShot(True)
        self._repaint.timeout.connect(self._repaint_now)

    def _schedule_repaint(self):
        if not self._repaint.isActive():
            wait = self._last_repaint + REPAINT_GAP_S - time.perf_counter()
            self._repaint.start(max(15, int(1000 * wait)))

    def _repaint_now(self):
        self._last_repaint = time.perf_counter()
        self._refresh_layers(final=False)

    @property
    def _layers_pending(self) -> bool:
        return self._pending_steps is not None

    def _layers_then_predict(self, genes: list[str]):
        """Bring each gene layer to the new raster one napari setter per turn of the event loop (its
        data, scale, translate: each takes 5-15 ms of this thread; together they held it for over
        100 ms under load), then predict the view. The new raster is empty (NaN): nothing shows in
        the turns between a layer's new data and its new geometry."""
        from qtpy.QtCore import QTimer

        pred = self.predictor
        self._pending_steps = steps = [step for g in genes for step in self._layer_steps(g)]

        @timed
        def layer_step(self):
            if self._pending_steps is not steps:  # finished by a view asked for meanwhile, or replaced
                return
            if self.predictor is not pred:  # superseded by another model or grid
                self._end_layer_steps()
            elif steps:
                steps.pop(0)()
                QTimer.singleShot(0, lambda: layer_step(self))
            else:
                self._end_layer_steps()
                self.predict_view()

        QTimer.singleShot(0, lambda: layer_step(self))

    def _end_layer_steps(self):
        self._pending_steps = None

    def _bring_layers(self, genes: list[str]):
        """Before a view is predicted: the layer steps still pending run now (a view asked for by a
        script, or a camera move, before they finished), and a gene without a layer gets one."""
        steps = self._pending_steps or []
        self._end_layer_steps()
        for step in steps:
            step()
        for g in genes:
            self._gene_layer(g, create=True)

    def gene_layer(self, gene: str):
        return find_layer(self._viewer, f"pred:{gene}")

    def _layer_steps(self, gene: str) -> list:
        """What brings the gene's layer to the current raster (none if it shows it already): adding
        the layer, or setting an existing one's data, geometry and metadata (another model, or
        another grid: the same layer shows the new raster, even where the grid is the old one's)."""

        layer, data = self.gene_layer(gene), self.raster.plane(gene)
        if self._shows_raster(layer, gene):
            return []
        kw = grid_image_kwargs(self.predictor.grid, self.predictor.pyr.world_mpp, f"predicted: {gene}",
                               self._cmap.value, float(self._opacity.value),
                               {"key": f"pred:{gene}", "kind": "prediction", "gene": gene})
        if layer is None:
            return [lambda: self._viewer.add_image(data, **kw)]
        return [lambda k=k: setattr(layer, k, data if k == "data" else kw[k])
                for k in ("data", "scale", "translate", "metadata")]

    def _shows_raster(self, layer, gene: str) -> bool:
        """Whether ``layer`` shows the current raster's plane of ``gene`` (the same array object)."""
        return layer is not None and layer.data is self.raster.plane(gene)

    def _gene_layer(self, gene: str, create: bool = False):
        """The gene's layer if it shows the current raster; with ``create`` it is made to, at once.
        (Called on every refresh: only a layer that must change builds its steps.)"""
        layer = self.gene_layer(gene)
        if self._shows_raster(layer, gene):
            return layer
        if not create:
            return None
        for step in self._layer_steps(gene):
            step()
        return self.gene_layer(gene)

    def _style_current(self, *_):
        g = self._current.value
        layer = self.gene_layer(g) if g and self.raster is not None else None
        if layer is not None:
            layer.opacity = float(self._opacity.value)
            layer.colormap = self._cmap.value
            self._contrast(layer, g)

    def _contrast(self, layer, gene, force: bool = True):
        lo, hi = percentile_limits(self.raster.plane(gene), self._lo.value, max(self._hi.value, self._lo.value + 0.5))
        old = layer.contrast_limits
        if force or abs(lo - old[0]) + abs(hi - old[1]) > 0.02 * max(hi - lo, 1e-6):
            layer.contrast_limits = (lo, hi)

    @timed
    def _refresh_layers(self, final: bool = True):
        """Redraw the visible gene layers: their pixels, their thumbnails once a view is complete
        (``final``; not while tiles stream in), never extent or highlight (the raster's shape never
        changes), and their contrast only where it moved noticeably (each change redraws napari's
        layer controls). A repaint still pending would draw nothing new: it is dropped."""
        self._repaint.stop()
        if self.raster is None:  # another model is being set up: nothing of the old one to draw
            return
        for g in self.shown_channels():
            layer = self._gene_layer(g)
            if layer is not None and layer.visible:  # napari refreshes a hidden layer when it is shown
                layer.refresh(thumbnail=final, extent=False, highlight=False)
                self._contrast(layer, g, force=False)
