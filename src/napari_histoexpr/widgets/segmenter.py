"""The "Transcriptome segmenter" dock panel: classes from the transcriptome -> train -> segment the
view or the slide -> live Dice against regions the user draws (autosaved as GeoJSON)."""

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
from ._common import PanelMixin, notify_error, start_worker
from .layers import core_of, find_layer
from .train_expression import SOURCES, LossCurve, chosen_sections

CLASS_SOURCES = ("genes", "leiden clusters", "k-means clusters", "spot labels (clusters file)")
GT_KEY = "seg:truth"
MAP_KEY = "seg:map"


class SegmenterPanel(PanelMixin, Container):
    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self.model = None
        self.predictor = None
        self.raster = None
        self.seg_labels = None
        self._worker = None
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
        self._windows = LineEdit(label="patch sizes µm", value="50,100")
        self._px = SpinBox(label="patch px", value=64, min=16, max=512)
        self._epochs = SpinBox(label="epochs", value=10, min=1, max=500)
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._out = FileEdit(label="save to", mode="d", nullable=True)
        self._train_btn = PushButton(text="Train")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._model_edit = FileEdit(label="segmenter", mode="d", nullable=True)
        self._load_btn = PushButton(text="Load segmenter")
        self._seg_view_btn = PushButton(text="Segment view")
        self._seg_slide_btn = PushButton(text="Segment slide")
        self._gt_class = ComboBox(label="draw class", choices=[])
        self._gt_btn = PushButton(text="Draw ground truth")
        self._status = Label(value="Pick how classes come from the transcriptome.")
        super().__init__(widgets=[
            self._source, self._genes, self._quantile, self._k, self._resolution, self._show_btn,
            self._sections, self._use_regions, self._manifest, self._windows, self._px, self._epochs,
            self._device, self._out,
            self._train_btn, self._cancel_btn, self._model_edit, self._load_btn, self._seg_view_btn,
            self._seg_slide_btn, self._gt_class, self._gt_btn, self._status,
        ])
        from qtpy.QtWidgets import QTableWidget

        self.curve = LossCurve("val balanced acc")
        self.native.layout().addWidget(self.curve.canvas)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "Dice", "cells"])
        self.table.setMinimumHeight(120)
        self.native.layout().addWidget(self.table)
        self._show_btn.changed.connect(lambda *_: self.show_classes())
        self._train_btn.changed.connect(lambda *_: self.train())
        self._cancel_btn.changed.connect(lambda *_: self._worker is not None and self._worker.quit())
        self._load_btn.changed.connect(lambda *_: self.load_model())
        self._seg_view_btn.changed.connect(lambda *_: self.segment(view=True))
        self._seg_slide_btn.changed.connect(lambda *_: self.segment(view=False))
        self._gt_btn.changed.connect(lambda *_: self.truth_layer(create=True))
        self._gt_class.changed.connect(self._set_draw_class)
        self._stop_workers_on_close("_worker")

    def reset_choices(self, *_):
        """Our choices are class names, not layers: keep them when napari's layers change."""

    # -- classes -----------------------------------------------------------------------------------
    def class_spec(self) -> dict:
        from ..segment.classes import class_spec

        src = self._source.value
        if src == CLASS_SOURCES[0]:
            genes = [g.strip() for g in (self._genes.value or "").split(",") if g.strip()]
            if not genes:
                raise HistoExprError("name at least one gene, e.g. ERBB2,COL1A1")
            return class_spec("genes", genes=genes, quantile=float(self._quantile.value))
        if src == CLASS_SOURCES[1]:
            return class_spec("clusters", method="leiden", resolution=float(self._resolution.value))
        if src == CLASS_SOURCES[2]:
            return class_spec("clusters", method="kmeans", n_clusters=int(self._k.value))
        return class_spec("column")

    def show_classes(self):
        """Colour the open section's spots by their transcriptome class (categorical Points layer)."""
        import pandas as pd

        from ..segment.classes import spot_classes
        from .layers import upsert_layer

        adata = core_of(find_layer(self._viewer, "spots"))
        slide = core_of(find_layer(self._viewer, "slide"))
        try:
            if adata is None or slide is None:
                raise HistoExprError("open a slide and its spots with the 'Slide & spots' panel first")
            lab = spot_classes(adata, self.class_spec())
        except HistoExprError as e:
            return self._fail(e)
        xy = np.asarray(adata.obsm["spatial"], float)
        feats = pd.DataFrame({"spot": adata.obs_names.astype(str), "class": pd.Categorical(lab.astype(str))})
        spots = find_layer(self._viewer, "spots")
        layer = upsert_layer(self._viewer, (xy[:, ::-1] * slide.world_mpp, {
            "name": "transcriptome classes", "features": feats, "face_color": "class",
            "size": float(np.mean(spots.size)) if spots is not None else 55.0, "border_width": 0,
            "units": "µm"}, "points"), "seg:classes")
        self._status.value = ", ".join(f"{k}: {v}" for k, v in lab.value_counts().items())
        return layer

    # -- training ----------------------------------------------------------------------------------
    def config(self):
        from ..segment.model import SegConfig

        try:
            windows = tuple(float(w) for w in self._windows.value.split(",") if w.strip())
        except ValueError:
            raise HistoExprError(f"patch sizes must be numbers in µm, e.g. 50,100 "
                                 f"(got {self._windows.value!r})") from None
        return SegConfig(classes=self.class_spec(), windows_um=windows, px=int(self._px.value),
                         epochs=int(self._epochs.value), device=self._device.value)

    def train(self):
        from ..io.manifest import read_manifest
        from ..segment.model import prepare_seg_sections, train_segmenter_steps

        if self._worker is not None:
            return None
        try:
            secs = chosen_sections(self._viewer, self._sections.value, self._manifest.value)
            secs = read_manifest(secs) if isinstance(secs, str) else secs
            if not self._out.value:
                raise HistoExprError("choose a folder to save the segmenter to")
            cfg, out = self.config(), Path(self._out.value)
        except HistoExprError as e:
            return self._fail(e)

        regions = None
        if self._use_regions.value and self.regions() and self._sections.value == SOURCES[0]:
            regions = {secs[0].section: self.regions()}

        def job():
            data = yield from prepare_seg_sections(secs, cfg, regions=regions)
            return (yield from train_segmenter_steps(data, out, cfg))

        self.curve.reset()
        self._train_btn.enabled, self._cancel_btn.enabled = False, True
        self._worker = start_worker(job, desc="Training segmenter", yielded=self._on_event,
                                    returned=lambda summary: self.load_model(out), errored=self._on_error,
                                    finished=self._on_finished)
        return self._worker

    def _on_event(self, ev):
        if self._closed:
            return
        if ev.get("stage") == "step":
            self.curve.add_step(ev["loss"], ev["steps"])
        elif ev.get("stage") == "epoch":
            self.curve.add_epoch(ev)
            self._status.value = (f"{ev['window_um']:g} µm patches, epoch {ev['epoch'] + 1}/{ev['epochs']}: "
                                  f"train acc {ev['train_acc']:.2f}, val balanced acc {ev['val_bal_acc']:.2f}")
        elif "msg" in ev:
            self._status.value = ev["msg"]

    def _on_error(self, exc):
        self._fail(exc)

    def _on_finished(self):
        self._worker = None
        if not self._closed:
            self._train_btn.enabled, self._cancel_btn.enabled = True, False

    # -- model and segmentation ----------------------------------------------------------------------
    def load_model(self, path=None):
        from ..segment.model import Segmenter

        model = self._load_model_folder(Segmenter.load, path, "choose a segmenter folder")
        if model is None:
            return None
        self.model = model
        self.predictor = None
        self._gt_class.choices = self.model.classes
        self._status.value = (f"segmenter: {', '.join(self.model.classes)} ({self.model.meta['mode']}, "
                              f"patches {', '.join(f'{w:g}' for w in self.model.windows)} µm)")
        layer = self.truth_layer(create=False)
        if layer is not None:
            self._set_draw_class()
        return self.model

    def _slide(self):
        layer = find_layer(self._viewer, "slide")
        return layer, core_of(layer)

    def segment(self, view: bool = True):
        """Segment the visible region or the whole slide in a worker; the Labels layer fills in."""
        from ..infer.region import Raster, RegionPredictor, grid_layer_geometry, visible_box
        from ..segment.evaluate import label_map
        from .layers import upsert_layer

        _, pyr = self._slide()
        try:
            if self.model is None:
                raise HistoExprError("train or load a segmenter first")
            if pyr is None:
                raise HistoExprError("open a slide with the 'Slide & spots' panel first")
        except HistoExprError as e:
            return self._fail(e)
        if self._worker is not None:
            self._worker.quit()
        model = self.model
        cam = self._viewer.scene.camera
        box = visible_box(cam.center, cam.zoom, self._viewer.canvas.size, pyr.world_mpp, 0.05) if view else \
            (0, 0, *pyr.level0_shape)

        current = self.predictor

        def job():
            rp = current
            if rp is None or rp.pyr is not pyr or rp.model is not model:
                rp = RegionPredictor(model, pyr, min(model.windows) / 2, tile_cells=8)
                yield ("ready", rp)
            tiles = rp.view_tiles(box)
            for t, v in rp.run(tiles):
                yield ("tile", (t, v))
            return len(tiles)

        def on_item(item):
            if self._closed:
                return
            kind, val = item
            if kind == "ready":
                self.predictor = val
                self.raster = Raster(val.grid, model.classes)
                self.seg_labels = np.zeros((val.grid.rows, val.grid.cols), np.int32)
                geo = grid_layer_geometry(val.grid, pyr.world_mpp)
                layer = upsert_layer(self._viewer, (self.seg_labels, dict(name="segmentation", opacity=0.5, units="µm",
                                                                      **geo), "labels"), MAP_KEY)
                layer.data = self.seg_labels
                return
            t, v = val
            self.raster.put(t, v)
            rs, cs = self.predictor.grid.tile_slices(*t)
            self.seg_labels[rs, cs] = label_map(v)
            find_layer(self._viewer, MAP_KEY).refresh()

        self._status.value = "segmenting…"
        self._worker = start_worker(job, desc="Segmenting", yielded=on_item, errored=self._on_error,
                                    finished=self._on_segmented)
        return self._worker

    def _on_segmented(self):
        self._worker = None
        if self._closed:
            return
        self._status.value = "segmented"
        self.update_dice()

    # -- ground truth and Dice -----------------------------------------------------------------------
    def truth_layer(self, create: bool = False):
        import pandas as pd

        layer = find_layer(self._viewer, GT_KEY)
        if layer is not None or not create:
            return layer
        slide_layer, pyr = self._slide()
        if pyr is None:
            notify_error(HistoExprError("open a slide first: annotations belong to a slide"))
            return None
        from ..segment.annotations import load_regions, sidecar_path

        path = sidecar_path(pyr.path)
        classes = list(self._gt_class.choices) or ["region"]
        regions = load_regions(path) if path.exists() else []
        data = [np.asarray(p, float)[:, ::-1] * pyr.world_mpp for p, _ in regions]
        labels = [c for _, c in regions]
        for c in labels:
            if c not in classes:
                classes.append(c)
        feats = pd.DataFrame({"class": pd.Categorical(labels, categories=classes)})
        layer = self._viewer.add_shapes(
            data or None, shape_type="polygon", name="ground truth", edge_width=4.0, face_color="transparent",
            edge_color="class" if labels else "yellow", features=feats if labels else None, units="µm",
            metadata={"histoexpr": {"key": GT_KEY, "kind": "annotations", "sidecar": str(path)}})
        if not labels:
            layer.features = pd.DataFrame({"class": pd.Categorical([], categories=classes)})
            layer.edge_color = "class"
        self._gt_class.choices = classes
        self._set_draw_class()
        layer.events.data.connect(self._on_truth_changed)
        layer.events.features.connect(self._on_truth_changed)
        layer.mode = "add_polygon"
        self._status.value = (f"restored {len(regions)} regions from {path.name}" if regions else
                              f"draw regions; they are saved to {path}")
        return layer

    def _set_draw_class(self, *_):
        layer = find_layer(self._viewer, GT_KEY)
        if layer is not None and self._gt_class.value:
            layer.feature_defaults = {"class": self._gt_class.value}

    def regions(self) -> list:
        """Drawn regions as ``(polygon level-0 (x, y), class)``."""
        layer = find_layer(self._viewer, GT_KEY)
        _, pyr = self._slide()
        if layer is None or pyr is None:
            return []
        cls = layer.features["class"].astype(str).tolist() if "class" in layer.features else []
        return [(np.asarray(d)[:, -2:][:, ::-1] / pyr.world_mpp, c) for d, c in zip(layer.data, cls)]

    def _on_truth_changed(self, *_):
        from ..segment.annotations import save_regions

        layer = find_layer(self._viewer, GT_KEY)
        if layer is None:
            return
        save_regions(layer.metadata["histoexpr"]["sidecar"], self.regions())  # autosave, atomic
        self.update_dice()

    def dice(self) -> dict | None:
        from ..segment.annotations import rasterise
        from ..segment.evaluate import dice_scores

        if self.seg_labels is None or self.model is None:
            return None
        regions = self.regions()
        if not regions:
            return None
        g = self.predictor.grid
        truth = rasterise(regions, self.model.classes, g.stride, g.rows, g.cols)
        valid = truth >= 0
        d = dice_scores(self.seg_labels, truth, self.model.classes, valid=valid)
        d["cells"] = {c: int((truth == i).sum()) for i, c in enumerate(self.model.classes)}
        return d

    def update_dice(self):
        from qtpy.QtWidgets import QTableWidgetItem

        d = self.dice()
        rows = [] if d is None else [(c, v, d["cells"].get(c, 0)) for c, v in d["per_class"].items()] + \
            [("mean", d["mean_dice"], sum(d["cells"].values()))]
        self.table.setRowCount(len(rows))
        for i, (c, v, n) in enumerate(rows):
            for j, txt in enumerate((c, f"{v:.3f}", str(n))):
                self.table.setItem(i, j, QTableWidgetItem(txt))
        return d
