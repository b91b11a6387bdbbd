"""The "Transcriptome segmenter" dock panel: classes from the transcriptome -> train -> segment the
view or the slide -> live Dice against regions the user draws (autosaved as GeoJSON).

Wiring only: training is :mod:`napari_histoexpr.train.segmenter_trainer`, segmentation
:func:`napari_histoexpr.segment.maps.segment_region`, both run in napari workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from ..errors import HistoExprError
from ..infer.grid import grid_layer_geometry
from ..io.manifest import as_sections
from ..layerdata import class_points_layer_data, visible_box
from ..models.catalog import DEVICES
from ..segment.annotations import rasterise
from ..segment.classes import spot_classes
from ..segment.maps import dice_scores, segment_region
from ..train.expression_trainer import epoch_line
from ..train.segmenter_trainer import FEATURES, SegConfig, segmenter_steps
from . import _annotations as gt
from ._common import PanelMixin, fill_table, make_table, mode_choice, notify_error, precision_choice, start_worker
from ._plots import LossCurve
from ._seg_classes import CLASS_SOURCES, class_spec_of
from ._session import Session
from .layers import find_layer, upsert_layer
from .train_expression import SOURCES, chosen_sections

MAP_KEY = "seg:map"


class SegmenterPanel(PanelMixin, Container):
    SETTINGS = {"classes_from": "_source", "genes": "_genes", "quantile": "_quantile", "k": "_k",
                "resolution": "_resolution", "train_on": "_sections", "use_regions": "_use_regions",
                "manifest": "_manifest", "features": "_features", "encoder": "_encoder", "pretrained": "_pretrained",
                "finetune": "_finetune", "windows_um": "_windows", "px": "_px", "epochs": "_epochs",
                "device": "_device", "out": "_out", "segmenter": "_model_edit", "draw_class": "_gt_class",
                "mode": "_mode", "precision": "_precision"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        d = SegConfig()
        self._viewer = viewer
        self.session = Session(viewer)
        self.model = self.predictor = self.raster = self.seg_labels = None
        self._source = ComboBox(label="classes from", choices=list(CLASS_SOURCES), value=CLASS_SOURCES[0])
        self._genes = LineEdit(label="genes", value="ERBB2,COL1A1")
        self._quantile = FloatSpinBox(label="quantile", value=0.5, min=0.0, max=0.99, step=0.05)
        self._k = SpinBox(label="clusters (k)", value=4, min=2, max=30)
        self._resolution = FloatSpinBox(label="leiden resolution", value=0.5, min=0.05, max=5.0, step=0.05)
        self._show_btn = PushButton(text="Show classes on spots")
        self._sections = ComboBox(label="train on", choices=list(SOURCES), value=SOURCES[0])
        self._use_regions = CheckBox(label="drawn regions set spot classes", value=False)
        self._use_regions.tooltip = ("Spots inside regions drawn on the open section take the region's class "
                                     "(overriding the transcriptome class) for training")
        self._manifest = FileEdit(label="manifest", mode="r", filter="*.csv", nullable=True)
        self._features = ComboBox(label="features", choices=list(FEATURES), value=d.features)
        self._features.tooltip = ("expression: an expression model's backbone (the encoder below; empty: one is "
                                  "trained on the same sections first) + a class head; scratch: patch "
                                  "classifiers trained on the classes alone (patch sizes, patch px)")
        self._encoder = FileEdit(label="encoder", mode="d", nullable=True)
        self._pretrained = FileEdit(label="pretrained encoder", mode="r", nullable=True)
        self._pretrained.tooltip = ("Optional, instead of the encoder folder: a pretrained encoder's weights file "
                                    "(UNI, Virchow2, ...). Its features are cached; retraining after a drawn region "
                                    "fits only the class head (seconds)")
        self._finetune = CheckBox(label="fine-tune the encoder", value=d.finetune)
        self._windows = LineEdit(label="patch sizes µm", value=",".join(f"{w:g}" for w in d.windows_um))
        self._px = SpinBox(label="patch px", value=d.px, min=16, max=512)
        self._epochs = SpinBox(label="epochs", value=d.epochs, min=1, max=500)
        self._device = ComboBox(label="device", choices=list(DEVICES), value=d.device)
        self._out = FileEdit(label="save to", mode="d", nullable=True)
        self._train_btn = PushButton(text="Train")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._model_edit = FileEdit(label="segmenter", mode="d", nullable=True)
        self._load_btn = PushButton(text="Load segmenter")
        self._mode, self._precision = mode_choice(), precision_choice()
        self._seg_view_btn = PushButton(text="Segment view")
        self._seg_slide_btn = PushButton(text="Segment slide")
        self._gt_class = ComboBox(label="draw class", choices=[])
        self._gt_btn = PushButton(text="Draw ground truth")
        self._status = Label(value="Pick how classes come from the transcriptome.")
        super().__init__(widgets=[
            self._source, self._genes, self._quantile, self._k, self._resolution, self._show_btn,
            self._sections, self._use_regions, self._manifest, self._features, self._encoder, self._pretrained,
            self._finetune, self._windows, self._px, self._epochs,
            self._device, self._out, self._train_btn, self._cancel_btn, self._model_edit, self._load_btn, self._mode,
            self._precision, self._seg_view_btn, self._seg_slide_btn, self._gt_class, self._gt_btn, self._status,
        ])
        self.curve = LossCurve("val balanced acc")
        self.native.layout().addWidget(self.curve.canvas)
        self.table = make_table(self, ["class", "Dice", "cells"])
        self._show_btn.changed.connect(lambda *_: self.show_classes())
        self._train_btn.changed.connect(lambda *_: self.train())
        self._cancel_btn.changed.connect(lambda *_: self.cancel())
        self._load_btn.changed.connect(lambda *_: self.load_model())
        self._seg_view_btn.changed.connect(lambda *_: self.segment(view=True))
        self._seg_slide_btn.changed.connect(lambda *_: self.segment(view=False))
        self._gt_btn.changed.connect(lambda *_: self.truth_layer(create=True))
        self._gt_class.changed.connect(self._set_draw_class)
        self._stop_workers_on_close("_worker")

    def reset_choices(self, *_):
        """Our choices are class names, not layers: keep them when napari's layers change."""

    def cancel(self):
        if self._worker is not None:
            self._worker.quit()

    # -- classes -----------------------------------------------------------------------------------
    def class_spec(self) -> dict:
        return class_spec_of(self._source.value, self._genes.value, self._quantile.value, self._resolution.value,
                             self._k.value)

    def show_classes(self):
        """Colour the open section's spots by their transcriptome class (categorical Points layer)."""

        try:
            adata, slide = self.session.require_spots(), self.session.require_slide()
            lab = spot_classes(adata, self.class_spec())
        except HistoExprError as e:
            return self._fail(e)
        layer = upsert_layer(self._viewer, class_points_layer_data(adata, lab, slide.world_mpp,
                                                                   self.session.spot_size_um()), "seg:classes")
        self._status.value = ", ".join(f"{k}: {v}" for k, v in lab.value_counts().items())
        return layer

    # -- training ----------------------------------------------------------------------------------
    def config(self) -> SegConfig:
        try:
            windows = tuple(float(w) for w in self._windows.value.split(",") if w.strip())
        except ValueError:
            raise HistoExprError(f"patch sizes must be numbers in µm, e.g. 50,100 "
                                 f"(got {self._windows.value!r})") from None
        return SegConfig(classes=self.class_spec(), features=self._features.value,
                         encoder=next((str(v) for v in (self._pretrained.value, self._encoder.value) if v), None),
                         finetune=bool(self._finetune.value), windows_um=windows, px=int(self._px.value),
                         epochs=int(self._epochs.value), device=self._device.value)

    def train(self):
        if self._worker is not None:
            return None
        try:
            secs = as_sections(chosen_sections(self._viewer, self._sections.value, self._manifest.value))
            if not self._out.value:
                raise HistoExprError("choose a folder to save the segmenter to")
            cfg, out = self.config(), Path(self._out.value)
        except HistoExprError as e:
            return self._fail(e)
        regions = None
        if self._use_regions.value and self.regions() and self._sections.value == SOURCES[0]:
            regions = {secs[0].section: self.regions()}

        self.curve.reset()
        self._train_btn.enabled, self._cancel_btn.enabled = False, True
        self._worker = start_worker(segmenter_steps, secs, out, cfg, regions, desc="Training segmenter",
                                    yielded=self._on_event, returned=lambda summary: self.load_model(out),
                                    errored=self._fail, finished=self._on_finished)
        return self._worker

    def _on_event(self, ev):
        if self._closed:
            return
        if "window_um" not in ev and ev.get("stage") in ("step", "epoch"):  # the encoder being trained
            if ev["stage"] == "epoch":
                self._status.value = f"encoder (expression model) {epoch_line(ev)}"
        elif ev.get("stage") == "step":
            self.curve.add_step(ev["loss"], ev["steps"])
        elif ev.get("stage") == "epoch":
            self.curve.add_epoch(ev)
            self._status.value = (f"{ev['window_um']:g} µm patches, epoch {ev['epoch'] + 1}/{ev['epochs']}: "
                                  f"train acc {ev['train_acc']:.2f}, val balanced acc {ev['val_bal_acc']:.2f}")
        elif "msg" in ev:
            self._status.value = ev["msg"]

    def _on_finished(self):
        self._worker = None
        if not self._closed:
            self._train_btn.enabled, self._cancel_btn.enabled = True, False

    # -- model and segmentation ----------------------------------------------------------------------
    def load_model(self, path=None):
        from ..models.segmenter import Segmenter

        model = self._load_model_folder(Segmenter.load, path, "choose a segmenter folder")
        if model is None:
            return None
        self.model, self.predictor = model, None
        self._gt_class.choices = model.classes
        self._status.value = (f"segmenter: {', '.join(model.classes)} ({model.meta['mode']}, "
                              f"patches {', '.join(f'{w:g}' for w in model.windows)} µm)")
        if self.truth_layer(create=False) is not None:
            self._set_draw_class()
        return model

    def segment(self, view: bool = True):
        """Segment the visible region or the whole slide in a worker; the Labels layer fills in."""

        try:
            if self.model is None:
                raise HistoExprError("train or load a segmenter first")
            pyr = self.session.require_slide()
        except HistoExprError as e:
            return self._fail(e)
        if self._worker is not None:
            self._worker.quit()
        cam = self._viewer.scene.camera
        box = visible_box(cam.center, cam.zoom, self._viewer.canvas.size, pyr.world_mpp, 0.05) if view else None
        self._status.value = "segmenting…"
        self._worker = start_worker(segment_region, self.model, pyr, None, box, lambda: False, self.predictor, 8,
                                    self._mode.value, self._precision.value, desc="Segmenting",
                                    yielded=self._on_segment_event, errored=self._fail, finished=self._on_segmented)
        return self._worker

    def _on_segment_event(self, ev):
        if self._closed:
            return
        if ev["stage"] == "ready":
            self.predictor, self.raster = ev["predictor"], ev["raster"]
            grid = self.predictor.grid
            self.seg_labels = np.zeros((grid.rows, grid.cols), np.int32)
            geo = grid_layer_geometry(grid, self.predictor.pyr.world_mpp)
            meta = {"histoexpr": {"kind": "segmentation", "classes": list(self.model.classes)}}
            upsert_layer(self._viewer, (self.seg_labels, dict(name="segmentation", opacity=0.5, units="µm", **geo,
                                                              metadata=meta), "labels"), MAP_KEY).data = self.seg_labels
        elif ev["stage"] in ("tile", "smoothed"):  # a new tile, or the whole map after spatial smoothing
            if ev["stage"] == "tile":
                self.raster.put(ev["tile"], ev["values"])
            rs, cs = self.predictor.grid.tile_slices(*ev["tile"]) if "tile" in ev else (slice(None), slice(None))
            self.seg_labels[rs, cs] = ev["labels"]
            find_layer(self._viewer, MAP_KEY).refresh()

    def _on_segmented(self):
        self._worker = None
        if not self._closed:
            self._status.value = "segmented"
            self.update_dice()

    # -- ground truth and Dice -----------------------------------------------------------------------
    def truth_layer(self, create: bool = False):
        layer = find_layer(self._viewer, gt.GT_KEY)
        if layer is None and create:
            pyr = self.session.slide()
            if pyr is None:
                notify_error(HistoExprError("open a slide first: annotations belong to a slide"))
                return None
            layer, classes, restored, path = gt.truth_layer(self._viewer, pyr, list(self._gt_class.choices))
            self._gt_class.choices = classes
            self._set_draw_class()
            self._status.value = (f"restored {restored} regions from {path.name}" if restored else
                                  f"draw regions; they are saved to {path}")
        if layer is not None and getattr(self, "_gt_watched", None) is not layer:  # e.g. a QuPath import's
            self._gt_watched = layer
            layer.events.data.connect(self.update_dice)
            layer.events.features.connect(self.update_dice)
        return layer

    def _set_draw_class(self, *_):
        layer = find_layer(self._viewer, gt.GT_KEY)
        if layer is not None and self._gt_class.value:
            gt.set_draw_class(layer, self._gt_class.value)

    def regions(self) -> list:
        """Drawn regions as ``(polygon level-0 (x, y), class)``."""
        return gt.drawn_regions(self._viewer, self.session.slide())

    def dice(self) -> dict | None:
        regions = self.regions()
        if self.seg_labels is None or self.model is None or not regions:
            return None
        g = self.predictor.grid
        truth = rasterise(regions, self.model.classes, g.stride, g.rows, g.cols)
        d = dice_scores(self.seg_labels, truth, self.model.classes, valid=truth >= 0)
        d["cells"] = {c: int((truth == i).sum()) for i, c in enumerate(self.model.classes)}
        return d

    def update_dice(self, *_):
        d = self.dice()
        rows = [] if d is None else [(c, f"{v:.3f}", d["cells"].get(c, 0)) for c, v in d["per_class"].items()] + \
            [("mean", f"{d['mean_dice']:.3f}", sum(d["cells"].values()))]
        fill_table(self.table, rows)
        return d
