"""The "Predicted expression" dock panel: live heatmaps of a trained model on the visible region,
next to the measured spots, with their agreement.

Wiring only: the work is :mod:`napari_histoexpr.infer.region` (grid, tiles, cache, latest-wins)
run in napari workers; results fill each gene's raster in place and the layers are refreshed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
)

from ..errors import HistoExprError
from ._common import PanelMixin, start_worker
from .layers import core_of, find_layer

COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "gray")
DEBOUNCE_MS = 200


def _timed(fn):
    """Record how long a Qt-thread slot of the panel ran (``panel.gui_timings``, for benchmarks)."""
    import functools
    import time

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        if self._closed:  # a worker's late signal after the viewer closed
            return None
        t0 = time.perf_counter()
        try:
            return fn(self, *a, **kw)
        finally:
            self.gui_timings.append((fn.__name__, time.perf_counter() - t0))

    return wrapper


class ExpressionPanel(PanelMixin, Container):
    """Load a model; predicted gene layers follow the view; compare with the measured spots."""

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self.model = None
        self.predictor = None
        self.raster = None
        self.spot_pred = None  # (spot ids, xy, predictions (N, genes), measured (N, genes))
        from collections import deque

        self.gui_timings: deque = deque(maxlen=10000)
        self._worker = None
        self._building = None
        self._spot_worker = None
        self._requests = None
        self.last_request_tiles: list = []
        self._model_edit = FileEdit(label="model", mode="d", nullable=True)
        self._load_btn = PushButton(text="Load model")
        self._genes = Select(label="genes", choices=[], allow_multiple=True)
        self._genes.native.setMinimumHeight(90)
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._stride = FloatSpinBox(label="grid step µm", value=0.0, min=0.0, max=1000.0, step=5.0)
        self._stride.tooltip = "Distance between predicted cells (0 = half the model's window)"
        self._follow = CheckBox(label="follow view", value=True)
        self._predict_btn = PushButton(text="Predict view")
        self._current = ComboBox(label="display gene", choices=[])
        self._opacity = FloatSlider(label="opacity", value=0.6, min=0.0, max=1.0)
        self._cmap = ComboBox(label="colormap", choices=list(COLORMAPS), value="inferno")
        self._lo = FloatSpinBox(label="low %", value=1.0, min=0.0, max=100.0)
        self._hi = FloatSpinBox(label="high %", value=99.0, min=0.0, max=100.0)
        self._compare_btn = PushButton(text="Compare with measured spots")
        self._status = Label(value="Load a model trained with 'Train expression model' or the CLI.")
        self._picked = Label(value="")
        super().__init__(widgets=[
            self._model_edit, self._load_btn, self._genes, self._device, self._stride, self._follow,
            self._predict_btn, self._current, self._opacity, self._cmap, self._lo, self._hi,
            self._compare_btn, self._status, self._picked,
        ])
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QTableWidget

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["gene", "r (view)", "r (section)", "spots"])
        self.table.setMinimumHeight(120)
        self.native.layout().addWidget(self.table)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._on_view_settled)
        self._load_btn.changed.connect(lambda *_: self.load_model())
        self._predict_btn.changed.connect(lambda *_: self.predict_view())
        self._compare_btn.changed.connect(lambda *_: self.compare_spots())
        self._genes.changed.connect(self._on_genes)
        for w in (self._current, self._opacity, self._cmap, self._lo, self._hi):
            w.changed.connect(self._style_current)
        cam = viewer.scene.camera
        cam.events.center.connect(self._on_camera)
        cam.events.zoom.connect(self._on_camera)
        self._stop_workers_on_close("_worker", "_building", "_spot_worker")
        self.native.destroyed.connect(lambda *_: self._timer.stop())

    def reset_choices(self, *_):
        """napari calls this on docked magicgui containers whenever layers change; our choices are
        the model's genes, not layers, and re-setting them would drop the user's selection."""

    # -- model and slide ---------------------------------------------------------------------------
    def load_model(self, path=None, genes: list[str] | None = None):
        from ..models.expression import ExpressionModel

        model = self._load_model_folder(ExpressionModel.load, path,
                                        "choose a model folder (model.safetensors + model.json)")
        if model is None:
            return None
        self.model, path = model, self._model_edit.value
        self.predictor = None
        self.spot_pred = None
        g = list(self.model.genes)
        self._genes.choices = g
        self._genes.value = genes or g[:1]
        self._status.value = (f"{Path(str(path)).name}: {len(g)} genes, {self.model.meta['backbone']}, "
                              f"{self.model.window_um:g} µm window, on {self.model.device}")
        return self.model

    def _slide(self):
        layer = find_layer(self._viewer, "slide")
        pyr = core_of(layer)
        if pyr is None and layer is not None:
            from ..io.slides import open_slide

            info = layer.metadata["histoexpr"]
            pyr = open_slide(info["path"], mpp=info.get("mpp"))
        return pyr

    def _ensure_predictor(self):
        """The predictor for the open slide; ``None`` while one is being built in a worker (the
        tissue mask reads the slide: never on the Qt thread), after which the view is predicted."""
        from ..infer.region import LatestRequest, Raster, RegionPredictor

        if self.model is None:
            raise HistoExprError("load a model first")
        pyr = self._slide()
        if pyr is None:
            raise HistoExprError("open a slide with the 'Slide & spots' panel first")
        stride = self._stride.value or None
        if self.predictor is not None and self.predictor.pyr is pyr and self.predictor.model is self.model and \
                not (stride and abs(self.predictor.stride_um - stride) > 1e-6):
            return self.predictor
        if self._building is not None:
            return None

        def ready(pred):
            self._building = None
            if self._closed:
                return
            self.predictor = pred
            self.raster = Raster(pred.grid, self.model.genes)
            self._requests = LatestRequest()
            for g in self._selected():
                self._gene_layer(g, create=True)
            self.predict_view()

        def failed(exc):
            self._building = None
            self._on_error(exc)

        self._building = start_worker(functools.partial(RegionPredictor, tile_cells=8), self.model, pyr, stride,
                                      returned=ready, errored=failed)
        self._status.value = "finding tissue…"
        return None

    @property
    def busy(self) -> bool:
        """Work in flight: building the predictor, predicting the view, or a pending debounce."""
        return self._building is not None or self._worker is not None or self._timer.isActive()

    def _selected(self) -> list[str]:
        return list(self._genes.value or [])

    # -- layers --------------------------------------------------------------------------------------
    def gene_layer(self, gene: str):
        return find_layer(self._viewer, f"pred:{gene}")

    def _gene_layer(self, gene: str, create: bool = False):
        from ..infer.region import grid_layer_geometry

        layer = self.gene_layer(gene)
        if layer is not None and layer.data.shape == self.raster.gene(gene).shape:
            return layer
        if not create:
            return None
        if layer is not None:
            self._viewer.layers.remove(layer)
        geo = grid_layer_geometry(self.predictor.grid, self.predictor.pyr.world_mpp)
        layer = self._viewer.add_image(
            self.raster.gene(gene), name=f"predicted: {gene}", colormap=self._cmap.value,
            opacity=float(self._opacity.value), blending="translucent", contrast_limits=(0.0, 1.0),
            units="µm", metadata={"histoexpr": {"key": f"pred:{gene}", "kind": "prediction", "gene": gene}},
            **geo)
        return layer

    def _on_genes(self, *_):
        genes = self._selected()
        self._current.choices = genes
        if genes and self._current.value not in genes:
            self._current.value = genes[0]
        if self.predictor is not None:
            for g in genes:
                self._gene_layer(g, create=True)
            self._refresh_layers()
            self.predict_view()

    def _style_current(self, *_):
        g = self._current.value
        layer = self.gene_layer(g) if g else None
        if layer is None:
            return
        layer.opacity = float(self._opacity.value)
        layer.colormap = self._cmap.value
        self._contrast(layer, g)

    def _contrast(self, layer, gene):
        v = self.raster.gene(gene)
        fin = v[np.isfinite(v)]
        if fin.size:
            lo, hi = np.percentile(fin, [self._lo.value, max(self._hi.value, self._lo.value + 0.5)])
            layer.contrast_limits = (float(lo), float(hi if hi > lo else lo + 1e-3))

    def _refresh_layers(self):
        for g in self._selected():
            layer = self._gene_layer(g)
            if layer is not None:
                layer.refresh()
                self._contrast(layer, g)

    # -- view-following inference -------------------------------------------------------------------
    def view_box(self, margin: float = 0.1):
        from ..infer.region import visible_box

        cam = self._viewer.scene.camera
        size = self._viewer.canvas.size
        return visible_box(cam.center, cam.zoom, size, self.predictor.pyr.world_mpp, margin)

    @_timed
    def _on_camera(self, *_):
        if self._follow.value and self.model is not None:
            self._timer.start()  # debounce: restart on every camera event
        if self.spot_pred is not None:
            self._timer.start()

    @_timed
    def _on_view_settled(self):
        if self._follow.value and self.model is not None:
            self.predict_view()
        self.update_table()

    @_timed
    def predict_view(self):
        """Predict the tiles in view (cached ones at once, the rest in a worker); returns the worker."""
        try:
            pred = self._ensure_predictor()
        except HistoExprError as e:
            return self._fail(e)
        if pred is None:
            return self._building  # predicts the view when the predictor is ready
        genes = self._selected()
        if not genes:
            return None
        for g in genes:
            self._gene_layer(g, create=True)
        tiles = pred.view_tiles(self.view_box())
        self.last_request_tiles = tiles
        cancelled = self._requests.new()  # supersedes every earlier request
        if self._worker is not None:
            self._worker.quit()
        todo = []
        for t in tiles:  # cached tiles are applied at once, on this thread (cheap copies)
            hit = pred.cache.get(t)
            if hit is not None:
                self.raster.put(t, hit)
            else:
                todo.append(t)
        self._refresh_layers()
        if not todo:
            self._status.value = f"{len(tiles)} tiles in view (all cached)"
            return None
        this = []  # the worker, for its own finished handler (which runs after we return)
        self._worker = start_worker(
            pred.run, todo, cancelled, desc="Predicting view", total=len(todo),
            yielded=lambda item, c=cancelled: self._on_tile(item, c), errored=self._on_error,
            finished=lambda: self._on_view_done(this[0], len(todo)))
        this.append(self._worker)
        self._status.value = f"predicting {len(todo)} of {len(tiles)} tiles in view…"
        return self._worker

    @_timed
    def _on_tile(self, item, cancelled):
        tile, values = item
        self.raster.put(tile, values)  # a stale request's tiles are still right: keep them
        if not cancelled():
            self._refresh_layers()

    @_timed
    def _on_view_done(self, worker, n):
        if self._worker is worker:
            self._worker = None
            self._status.value = f"view predicted ({n} new tiles, {len(self.predictor.cache)} cached)"
            self._refresh_layers()
            self.update_table()

    def _on_error(self, exc):
        self._fail(exc)

    # -- measured vs predicted -------------------------------------------------------------------------
    def compare_spots(self):
        """Predict at every measured spot (as in evaluation), add residual layers and the r table."""
        spots_layer = find_layer(self._viewer, "spots")
        adata = core_of(spots_layer)
        try:
            if self.model is None:
                raise HistoExprError("load a model first")
            if adata is None:
                raise HistoExprError("open the measured spots with the 'Slide & spots' panel first")
            pyr = self._slide()
            if pyr is None:
                raise HistoExprError("open the slide with the 'Slide & spots' panel first")
        except HistoExprError as e:
            return self._fail(e)
        model = self.model

        def job():
            from ..io.spots import shared_genes
            from ..train.expression import prepare_section

            genes = shared_genes(model.genes, adata)
            if not genes:
                from ..errors import UnknownGeneError

                raise UnknownGeneError(model.genes[0], [])
            yield "cutting spot patches"
            sd = prepare_section("view", pyr, adata, model.window_um, model.px, genes=genes, min_tissue=0.0,
                                 transform=model.patch_transform())
            yield "predicting at spots"
            pred = model.predict(sd.patches)[:, [model.genes.index(g) for g in genes]]
            return sd.spot_ids, sd.xy, genes, pred, sd.expr

        self._spot_worker = start_worker(job, desc="Predicting at spots", total=2,
                                         yielded=lambda msg: setattr(self._status, "value", msg),
                                         returned=self._on_spots, errored=self._on_error)
        return self._spot_worker

    def _on_spots(self, result):
        import pandas as pd

        if self._closed:
            return
        ids, xy, genes, pred, meas = result
        self.spot_pred = {"ids": ids, "xy": xy, "genes": genes, "pred": pred, "meas": meas}
        mpp = self.predictor.pyr.world_mpp if self.predictor else self._slide().world_mpp
        spots_layer = find_layer(self._viewer, "spots")
        size = float(np.mean(spots_layer.size)) if spots_layer is not None else 55.0
        data = np.asarray(xy)[:, ::-1] * mpp
        for g in self._selected() or genes[:1]:
            if g not in genes:
                continue
            j = genes.index(g)
            feats = pd.DataFrame({"spot": ids})
            for k in self._selected():
                if k in genes:
                    feats[f"{k} measured"] = meas[:, genes.index(k)]
                    feats[f"{k} predicted"] = pred[:, genes.index(k)]
            feats["residual"] = pred[:, j] - meas[:, j]
            lim = float(np.percentile(np.abs(feats["residual"]), 98)) or 1.0
            key = f"resid:{g}"
            layer = find_layer(self._viewer, key)
            kw = dict(features=feats, face_color="residual", face_colormap="PiYG",
                      face_contrast_limits=(-lim, lim), size=size, border_width=0, name=f"residual: {g}")
            if layer is None:
                layer = self._viewer.add_points(data, metadata={"histoexpr": {"key": key, "kind": "residual"}},
                                                units="µm", **kw)
                layer.mouse_drag_callbacks.append(self._on_click)
            else:
                from .layers import update_points

                update_points(layer, data, kw)
            layer.face_colorbar.visible = True
        self._status.value = f"compared {len(ids)} spots"
        self.update_table()

    def _on_click(self, layer, event):
        idx = layer.get_value(event.position, world=True)
        if idx is None:
            return
        row = layer.features.iloc[int(idx)]
        self._picked.value = "\n".join([f"spot {row['spot']}"] + [
            f"{c}: {row[c]:.3f}" for c in layer.features.columns if c not in ("spot",)])

    def table_rows(self) -> list[tuple[str, float, float, int]]:
        """``(gene, r over spots in view, r over the section, spots in view)`` per selected gene."""
        from ..metrics import pearson_columns

        sp = self.spot_pred
        if sp is None:
            return []
        xy = np.asarray(sp["xy"])
        if self.predictor is not None:
            y0, x0, y1, x1 = self.view_box(0.0)
            inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        else:
            inside = np.ones(len(xy), bool)
        r_all = pearson_columns(sp["pred"], sp["meas"])
        r_view = pearson_columns(sp["pred"][inside], sp["meas"][inside]) if inside.sum() > 2 else \
            np.full(len(sp["genes"]), np.nan)
        return [(g, float(r_view[sp["genes"].index(g)]), float(r_all[sp["genes"].index(g)]), int(inside.sum()))
                for g in (self._selected() or sp["genes"]) if g in sp["genes"]]

    def update_table(self):
        from qtpy.QtWidgets import QTableWidgetItem

        if self._closed:
            return
        rows = self.table_rows()
        self.table.setRowCount(len(rows))
        for i, (g, rv, ra, n) in enumerate(rows):
            for j, v in enumerate((g, "–" if not np.isfinite(rv) else f"{rv:.3f}",
                                   "–" if not np.isfinite(ra) else f"{ra:.3f}", str(n))):
                self.table.setItem(i, j, QTableWidgetItem(v))
