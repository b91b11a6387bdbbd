"""The "Predicted expression" dock panel: live heatmaps of a trained model on the visible region,
next to the measured spots, with their agreement.

Wiring only: the view's state is a :class:`~napari_histoexpr.infer.live_view.LiveView` (model, predictor,
raster, latest request) that this panel observes; the work is :mod:`napari_histoexpr.infer.region` (tiles,
cache) and :func:`napari_histoexpr.infer.spot_prediction.predict_at_spots`, run in napari workers; results
fill each gene's raster in place and the layers are refreshed.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from pathlib import Path

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
from ..infer.live_view import LiveView
from ..infer.region import predictor_with_raster
from ..layerdata import visible_box
from ..models.catalog import DEVICES
from ._common import PanelMixin, make_table, mode_choice, precision_choice, start_worker, timed
from ._gene_layers import GeneLayers
from ._session import Session
from ._set_scores import SetScores
from ._side_by_side import SideBySide
from ._spot_compare import SpotComparison
from ._trust_view import TrustView

COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "gray")
DEBOUNCE_MS = 150  # camera events closer than this are one request


class ExpressionPanel(SetScores, SideBySide, GeneLayers, SpotComparison, TrustView, PanelMixin, Container):
    """Load a model; predicted gene layers follow the view; compare with the measured spots."""

    SETTINGS = {"model": "_model_edit", "genes": "_genes", "device": "_device", "mode": "_mode",
                "precision": "_precision", "stride_um": "_stride", "follow": "_follow", "display_gene": "_current",
                "opacity": "_opacity", "colormap": "_cmap", "low_percentile": "_lo", "high_percentile": "_hi",
                "uncertainty": "_uncertainty", "gene_set": "_set_pick", "add_set": "_set_text", "side_by_side": "_side"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        from qtpy.QtCore import QTimer

        self._viewer = viewer
        self.session = Session(viewer)
        self.view = LiveView()  # the model, predictor, raster and latest request: observed below
        self.spot_pred = None  # a SpotPrediction of the open section
        self.gui_timings: deque = deque(maxlen=10000)
        self.tile_times: deque = deque(maxlen=10000)  # when each predicted tile reached the layers
        self._building = self._spot_worker = None
        self._model_edit = FileEdit(label="model", mode="d", nullable=True)
        self._load_btn = PushButton(text="Load model")
        self._genes = Select(label="genes", choices=[], allow_multiple=True)
        self._genes.native.setMinimumHeight(90)
        self._device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self._mode, self._precision = mode_choice(), precision_choice()
        self._stride = FloatSpinBox(label="grid step µm", value=0.0, min=0.0, max=1000.0, step=5.0)
        self._stride.tooltip = ("Distance between predicted cells (0 = the model's own grid: half its window, or "
                                "a sub-spot model's cell; dense mode rounds it to whole feature cells)")
        self._follow = CheckBox(label="follow view", value=True)
        self._predict_btn = PushButton(text="Predict view")
        self._stop_btn = PushButton(text="Stop", enabled=False)
        self._stop_btn.tooltip = "Stop predicting the view; the tiles done so far stay on screen and cached"
        self._current = ComboBox(label="display gene", choices=[])
        self._opacity = FloatSlider(label="opacity", value=0.6, min=0.0, max=1.0)
        self._cmap = ComboBox(label="colormap", choices=list(COLORMAPS), value="inferno")
        self._lo = FloatSpinBox(label="low %", value=1.0, min=0.0, max=100.0)
        self._hi = FloatSpinBox(label="high %", value=99.0, min=0.0, max=100.0)
        self._compare_btn = PushButton(text="Compare with measured spots")
        self._status = Label(value="Load a model trained with 'Train expression model' or the CLI.")
        self._picked = Label(value="")
        super().__init__(widgets=[
            self._model_edit, self._load_btn, self._genes, self._device, self._mode, self._precision, self._stride,
            self._follow, self._predict_btn, self._stop_btn, self._current, self._opacity, self._cmap, self._lo,
            self._hi, *self._init_trust(), *self._init_scores(), *self._init_side(), self._compare_btn, self._status,
            self._picked,
        ])
        self.table = make_table(self, ["gene", "r (view)", "r (section)", "spots"])
        self._timer = QTimer(self.native)  # dies with the panel
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._on_view_settled)
        self._init_repaint(self.native)
        self._load_btn.changed.connect(lambda *_: self.load_model(background=True))
        self._predict_btn.changed.connect(lambda *_: self.predict_view())
        self._stop_btn.changed.connect(lambda *_: self.stop())
        self._compare_btn.changed.connect(lambda *_: self.compare_spots())
        self._genes.changed.connect(self._on_genes)
        for w in (self._current, self._opacity, self._cmap, self._lo, self._hi):
            w.changed.connect(self._style_current)
        self.view.status.connect(lambda text: setattr(self._status, "value", text))
        self.view.predictor_changed.connect(lambda *_: self._layers_then_predict(self.shown_channels()))
        cam = viewer.scene.camera
        cam.events.center.connect(self._on_camera)
        cam.events.zoom.connect(self._on_camera)
        self._stop_workers_on_close("_worker", "_building", "_spot_worker", "_ood_worker")

    model = property(lambda self: self.view.model)
    predictor = property(lambda self: self.view.predictor)
    raster = property(lambda self: self.view.raster)
    last_request_tiles = property(lambda self: self.view.last_request_tiles)

    def reset_choices(self, *_):
        """napari calls this on docked magicgui containers whenever layers change; our choices are
        the model's genes, not layers, and re-setting them would drop the user's selection."""

    # -- model and slide ---------------------------------------------------------------------------
    def load_model(self, path=None, genes: list[str] | None = None, background: bool = False):
        """Load a model folder and show ``genes`` (default: its first). With ``background`` (what the
        button does) the weights load in a worker, so the viewer stays responsive; the worker is
        returned. Otherwise the model is loaded here and returned (scripts)."""
        from ..models.expression import ExpressionModel

        missing = "choose a model folder (model.safetensors + model.json)"
        if background:
            return self._load_model_folder(ExpressionModel.load, path, missing,
                                           done=lambda m: self._use_model(m, genes))
        model = self._load_model_folder(ExpressionModel.load, path, missing)
        return None if model is None else self._use_model(model, genes)

    @timed
    def _use_model(self, model, genes: list[str] | None = None):
        self._halt()  # a view request of the previous model must not reach the new model's layers
        self._apply_uncertainty(model)
        self.view.set_model(model)
        self.spot_pred = None
        g = list(model.genes)
        self._genes.choices = g
        self._genes.value = genes or g[:1]
        self._status.value = (f"{Path(str(self._model_edit.value)).name}: {len(g)} genes, {model.meta['backbone']}, "
                              + (f"sub-spot map of {model.cell_um:g} µm cells" if model.subspot else
                                 f"{model.window_um:g} µm window") + f", on {model.device}")
        if self._follow.value and self.session.slide_layer is not None:
            self.predict_view()  # following the view: the new model shows it without a camera move
        return model

    def build_predictor(self):
        """The predictor for the open slide; ``None`` while one is being built in a worker (the
        tissue mask reads the slide: never on the Qt thread), after which the view is predicted."""

        if self.model is None:
            raise HistoExprError("load a model first")
        pyr = self.session.require_slide()
        p = self.predictor
        if p is not None and p.pyr is pyr and self._fits(p):
            return p
        if self._building is not None:
            return None

        def failed(exc):
            self._building = None
            self._fail(exc)

        # a dense job computes its tiles' rectangle at once, so small tiles are free: 2 cells hug the view
        # (1-cell tiles would save 10 % more but cost per-tile Qt work at zoom-out); patch mode keeps 8
        build = functools.partial(predictor_with_raster, tile_cells=2 if self._mode.value == "dense" else 8,
                                  mode=self._mode.value, precision=self._precision.value)
        self._building = start_worker(build, self.model, pyr, self._stride.value or None,
                                      returned=self._on_predictor, errored=failed)
        self._status.value = "finding tissue" + (" and calibrating int8…" if self._precision.value == "int8" else "…")
        return None

    @timed
    def _on_predictor(self, built):
        pred, raster = built
        self._building = None
        if not self._fits(pred):
            self.predict_view()  # the model, mode, precision or grid step changed while this one was built
            return
        self.view.set_predictor(pred, raster)  # its layers are brought to the raster, then the view predicted
        self.check_slide(pred)

    def _fits(self, pred) -> bool:
        """Whether ``pred`` predicts with the panel's model, mode, precision and grid step (0: any)."""
        return self.view.fits(pred, self._mode.value, self._precision.value, self._stride.value)

    @property
    def busy(self) -> bool:
        """Work in flight: building the predictor, predicting the view, scoring the slide, a pending
        debounce or repaint."""
        return (self._building is not None or self._worker is not None or self._timer.isActive()
                or self._repaint.isActive() or self._layers_pending or self._ood_worker is not None)

    def selected_genes(self) -> list[str]:
        return list(self._genes.value or [])

    def _on_genes(self, *_):
        genes = self.selected_genes()
        self._current.choices = genes
        if genes and self._current.value not in genes:
            self._current.value = genes[0]
        if self.predictor is not None:
            for g in self.shown_channels():
                self._gene_layer(g, create=True)
            self._refresh_layers()
            self.predict_view()

    # -- view-following inference -------------------------------------------------------------------
    def view_box(self):  # the level-0 box in view
        cam = self._viewer.scene.camera
        return visible_box(cam.center, cam.zoom, self._viewer.canvas.size, self.predictor.pyr.world_mpp)

    @timed
    def _on_camera(self, *_):
        if (self._follow.value and self.model is not None) or self.spot_pred is not None:
            leading = not self._timer.isActive()  # the first move after a pause (a jump, a key) is answered
            self._timer.start()  # at once; then debounced: the view where a drag or zoom settles too
            if leading:  # at once = after this turn of the event loop (a zoom moves the centre too)
                self._timer.singleShot(0, self._on_view_settled)

    @timed
    def _on_view_settled(self):  # while the layers take a new raster, their last step predicts the view
        if self._follow.value and self.model is not None and not self._layers_pending:
            self.predict_view()
        self.update_table()

    @timed
    def predict_view(self):
        """Predict the tiles in view (cached ones at once, the rest in a worker); returns the worker."""
        try:
            pred = self.build_predictor()
        except HistoExprError as e:
            return self._fail(e)
        if pred is None:
            return self._building  # predicts the view when the predictor is ready
        genes = self.shown_channels()
        if not genes:
            return None
        self._bring_layers(genes)
        # the earlier request is superseded; cached tiles are put at once, on this thread (cheap copies)
        req = self.view.request(self.view_box(), in_flight=self._worker is not None)
        if req is None:
            return self._worker  # this view is shown or being predicted (the debounce of a single move ends here)
        self._halt(debounce=False, supersede=False)  # the earlier request's worker (its end then reports nothing)
        self._last_repaint = 0.0  # the new view's first tiles are drawn at once
        if req.cached:  # napari redraws a layer on a refresh: only when cached tiles were put
            self._refresh_layers()
        if not req.todo:
            return None
        this = []  # the worker, for its own finished handler (which runs after we return)
        self._worker = start_worker(
            pred.run, req.todo, req.cancelled,  # no activity-dock bar: napari takes 15-100 ms of this thread per bar
            yielded=lambda item, r=req: self._on_tile(r, item), errored=self._fail,
            finished=lambda: self._on_view_done(this[0], req))
        this.append(self._worker)
        self._stop_btn.enabled = True
        return self._worker

    def _halt(self, debounce: bool = True, supersede: bool = True):
        """Supersede the in-flight view request and quit its worker (at its next tile; Stop disabled);
        returns it. ``debounce``: also drop a pending camera debounce."""
        if supersede:
            self.view.supersede()
        worker, self._worker = self._worker, None
        if debounce:
            self._timer.stop()
        self._stop_btn.enabled = False
        if worker is not None:
            worker.quit()
        return worker

    @timed
    def stop(self):
        """Stop predicting the view (done tiles stay cached and shown; a camera move or Predict view resumes)."""
        if self._halt() is None or self.predictor is None:
            return
        self._refresh_layers()
        self.view.stopped()

    @timed
    def _on_tile(self, req, item):
        if not self.view.accept(req, *item):  # a late tile of a model or grid no longer shown
            return
        self.tile_times.append(time.perf_counter())
        if not req.cancelled():
            self._schedule_repaint()

    @timed
    def _on_view_done(self, worker, req):
        if self._worker is worker:
            self._worker = None
            self._stop_btn.enabled = False
            self.view.finished(req)
            self._refresh_layers()
            self.update_table()
