"""The "Slide-level" dock panel: load a HE2RNA, G-HANet or multi-task model and show where on the
open slide it found its signal (per-tile gene scores, attention) as a heatmap layer.

The tile features of the slide are computed in a worker (progress, cancel; the features cache is
resumable, so a cancelled run continues where it stopped) with the encoder the model was trained on.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    LineEdit,
    PushButton,
)

from ..errors import HistoExprError
from ..io.slides import open_slide
from ..models.catalog import DEVICES
from ..slide_level.bags import bag_from_features, tile_raster
from ..slide_level.features import Encoder, extract_features_steps
from ..slide_level.registry import load_slide_model
from ._common import PanelMixin, start_worker
from ._session import Session
from .layers import find_layer, upsert_layer

HEAT_KEY = "slide-level:heatmap"
KIND_NAMES = {"he2rna": "HE2RNA", "ghanet": "G-HANet", "mtm": "multi-task"}


def default_cache(slide_path, encoder_source: str, tile_um: float, px: int) -> Path:
    """Where a slide's features go when the user names no folder (one per slide, encoder, tiling)."""
    h = hashlib.sha1(f"{Path(slide_path).resolve()}|{encoder_source}|{tile_um}|{px}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "napari-histoexpr-features" / f"{Path(slide_path).stem}-{h}.zarr"


class SlideLevelPanel(PanelMixin, Container):
    SETTINGS = {"model": "_model_edit", "device": "_device", "slide": "_slide_edit", "encoder": "_encoder",
                "features_folder": "_cache", "tissue": "_tissue", "heatmap": "_map", "colormap": "_colormap",
                "opacity": "_opacity"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self.session = Session(viewer)
        self.model = None
        self.bag = None
        self.maps: dict[str, np.ndarray] = {}
        self._slide_pred = None  # slide-level prediction (genes) or survival curve (G-HANet) of self.bag
        self._worker = None
        self._model_edit = FileEdit(label="model", mode="d", nullable=True)
        self._device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self._load_btn = PushButton(text="Load model")
        self._slide_edit = FileEdit(label="slide (if none open)", mode="r", nullable=True)
        self._encoder = LineEdit(label="encoder", value="")
        self._encoder.tooltip = "The encoder the model's features were made with (filled in from the model)"
        self._cache = FileEdit(label="features folder", mode="d", nullable=True)
        self._cache.tooltip = "Where the slide's tile features are cached (default: a temporary folder)"
        self._tissue = ComboBox(label="tissue", choices=[], visible=False)
        self._run_btn = PushButton(text="Compute heatmaps")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._map = ComboBox(label="heatmap", choices=[])
        self._colormap = ComboBox(label="colormap", choices=["inferno", "viridis", "magma", "turbo", "plasma"],
                                  value="inferno")
        self._opacity = FloatSlider(label="opacity", value=0.6, min=0.0, max=1.0)
        self._status = Label(value="Load a slide-level model (bulk, survival or multitask train).")
        self._summary = Label(value="")
        super().__init__(widgets=[self._model_edit, self._device, self._load_btn, self._slide_edit, self._encoder,
                                  self._cache, self._tissue, self._run_btn, self._cancel_btn, self._map,
                                  self._colormap, self._opacity, self._status, self._summary])
        self._load_btn.changed.connect(lambda *_: self.load_model())
        self._run_btn.changed.connect(lambda *_: self.compute())
        self._cancel_btn.changed.connect(lambda *_: self._worker is not None and self._worker.quit())
        self._map.changed.connect(lambda *_: self.show_map())
        self._tissue.changed.connect(lambda *_: self._rescore())
        self._colormap.changed.connect(lambda *_: self._style())
        self._opacity.changed.connect(lambda *_: self._style())
        for label in (self._status, self._summary):  # long lines wrap over the panel's full width
            label.native.setWordWrap(True)
            label.native.setMinimumWidth(320)
            label.native.setMinimumHeight(36)
        self._stop_workers_on_close("_worker")

    def reset_choices(self, *_):
        """Our choices are the model's maps, not layers: keep them when napari's layers change."""

    # -- model ---------------------------------------------------------------------------------------
    def load_model(self, path=None):
        model = self._load_model_folder(load_slide_model, path, "choose a slide-level model folder")
        if model is None:
            return None
        self.model, self.maps = model, {}
        feats = model.meta.get("features", {})
        self._encoder.value = feats.get("encoder_source") or ""
        tissues = list(model.meta.get("tissues", []))
        self._tissue.visible = bool(tissues)
        self._tissue.choices = tissues
        if tissues:
            self._tissue.value = tissues[0]
        self._map.choices = self._map_names()
        kind = KIND_NAMES.get(model.kind, model.kind)
        self._status.value = (f"{kind} model: {len(self._map.choices)} maps; tiles of {feats.get('tile_um')} µm "
                              f"by {feats.get('encoder')}")
        return model

    def _map_names(self) -> list[str]:
        if self.model is None:
            return []
        if self.model.kind == "ghanet":
            return ["attention"] + [f"attention:{g}" for g in self.model.groups]
        return list(self.model.genes)

    # -- slide and features ------------------------------------------------------------------------------
    def slide(self):
        """The slide open in the viewer (opened by this plugin), else the one chosen here (opened now)."""

        pyr = self.session.slide()
        if pyr is not None:
            return pyr
        if not self._slide_edit.value or not Path(self._slide_edit.value).is_file():
            raise HistoExprError("open a slide (Slide & spots panel) or choose one here")
        pyr = open_slide(self._slide_edit.value)
        self.session.show_slide(pyr)
        self._viewer.reset_view()
        return pyr

    def compute(self):
        """Tile features of the open slide (cached) -> the model's per-tile maps, in a worker."""

        if self._worker is not None:
            return None
        try:
            if self.model is None:
                raise HistoExprError("load a slide-level model first")
            pyr = self.slide()
            feats = self.model.meta.get("features", {})
            source = (self._encoder.value or "").strip()
            if not source:
                raise HistoExprError("name the encoder the model's features were made with")
            tile_um, px = float(feats["tile_um"]), int(feats["px"])
            out = (Path(self._cache.value) / f"{Path(pyr.path).stem}.zarr" if self._cache.value
                   else default_cache(pyr.path, source, tile_um, px))
            device = self._device.value
        except (HistoExprError, KeyError) as e:
            return self._fail(e if isinstance(e, HistoExprError) else HistoExprError(f"model lacks {e}"))

        def job():
            yield {"msg": "loading the encoder"}
            enc = Encoder(source, device)
            if enc.dim != self.model.projector.mean.shape[0]:
                raise HistoExprError(f"encoder {source} gives {enc.dim} features; the model expects "
                                     f"{self.model.projector.mean.shape[0]}: choose the model's own encoder")
            yield from extract_features_steps(enc, pyr, out, tile_um, px)
            return bag_from_features(out)

        self._run_btn.enabled, self._cancel_btn.enabled = False, True
        self._status.value = "computing tile features…"
        self._worker = start_worker(job, desc="Slide-level heatmaps", yielded=self._on_event,
                                    returned=self._on_bag, errored=self._fail, finished=self._on_finished)
        return self._worker

    def _on_event(self, ev):
        if self._closed:
            return
        if ev.get("stage") == "tile":
            self._status.value = f"tile features: chunk {ev['done']}/{ev['total']}"
        elif "msg" in ev:
            self._status.value = ev["msg"]

    def _on_finished(self):
        aborted = self._worker is not None and self._worker.abort_requested
        self._worker = None
        if self._closed:
            return
        self._run_btn.enabled, self._cancel_btn.enabled = True, False
        if aborted:
            self._status.value = "cancelled: the features computed so far are kept; run again to continue"

    def _on_bag(self, bag):
        if self._closed or bag is None:
            return
        self.bag = bag
        self._status.value = (f"{len(bag.feats)} tissue tiles of {bag.tile_um:g} µm: "
                              f"{len(self._map_names())} maps ready")
        self._rescore()

    def _rescore(self):
        if self.bag is None or self.model is None:
            return
        tissue = self.tissue
        kw = {"tissue": tissue} if self.model.kind == "mtm" else {}
        try:
            self.maps = self.model.heatmaps(self.bag, self._map_names(), **kw)
            if self.model.kind == "ghanet":
                self._slide_pred = self.model.survival_curves([self.bag.feats])[0]
            else:
                self._slide_pred = self.model.predict([self.bag], None if tissue is None else [tissue])[0]
        except HistoExprError as e:
            return self._fail(e)
        self.show_map()

    @property
    def summary(self) -> str:
        """The slide-level result shown under the status: predicted bulk of the map's gene, or risk."""
        return str(self._summary.value)

    @property
    def tissue(self):
        """The tissue picked for a multi-task model (``None`` for other models)."""
        return self._tissue.value if self.model is not None and self.model.meta.get("tissues") else None

    def _summarise(self):
        """The slide-level prediction computed by the last re-score: risk (= minus the summed survival
        curve) and survival per bin for G-HANet, the shown gene's predicted bulk otherwise."""
        m, pred = self.model, self._slide_pred
        if m.kind == "ghanet":
            self._summary.value = (f"risk {-float(pred.sum()):.3f}; predicted survival per time bin: "
                                   + ", ".join(f"{s:.2f}" for s in pred))
        else:
            g = self._map.value or m.genes[0]
            self._summary.value = f"slide-level {g}: {np.expm1(pred[m.genes.index(g)]):.1f} (predicted bulk)"

    # -- layers ----------------------------------------------------------------------------------------
    def show_map(self, name: str | None = None):
        """Show (or update in place) the heatmap layer with the chosen map."""

        if name is not None:
            self._map.value = name
        name = self._map.value
        if self.bag is None or name not in self.maps:
            return None
        img, geo = tile_raster(self.bag, self.maps[name])
        fin = img[np.isfinite(img)]
        lo, hi = (np.percentile(fin, [1, 99]) if fin.size else (0.0, 1.0))
        kind = KIND_NAMES.get(self.model.kind, self.model.kind)
        layer = upsert_layer(self._viewer, (img, {
            "name": f"{kind}: {name}", "colormap": self._colormap.value, "opacity": float(self._opacity.value),
            "contrast_limits": (float(lo), float(hi if hi > lo else lo + 1e-6)), "blending": "translucent",
            "units": "µm", **geo, "metadata": {"histoexpr": {"map": name, "model": self.model.kind}}},
            "image"), HEAT_KEY)
        layer.contrast_limits = (float(lo), float(hi if hi > lo else lo + 1e-6))
        self._summarise()
        return layer

    def _style(self):
        layer = find_layer(self._viewer, HEAT_KEY)
        if layer is not None:
            layer.colormap = self._colormap.value
            layer.opacity = float(self._opacity.value)
