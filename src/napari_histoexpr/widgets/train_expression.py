"""The "Train expression model" dock panel: sections, genes, backbone, epochs, device -> a model folder;
or, with a pretrained encoder file chosen, a head fitted on its frozen features in seconds.

Training runs in a napari worker over :func:`napari_histoexpr.train.expression_trainer.train_from_manifest_steps`
(or :func:`napari_histoexpr.encoders.head_training.train_head_steps`);
the panel only shows its events (a live loss curve, progress in the activity dock) and can cancel
it: the checkpoint of the last finished epoch and the model saved so far stay on disk.
"""

from __future__ import annotations

from pathlib import Path

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

from ..encoders.head_training import HeadConfig, train_head_steps
from ..errors import HistoExprError
from ..models.catalog import BACKBONE_NAMES, DEVICES, HEADS
from ..train.expression_trainer import TrainConfig, epoch_line, summary_line, train_from_manifest_steps
from ._common import PanelMixin, start_worker
from ._plots import LossCurve
from ._session import Session

SOURCES = ("section open in the viewer", "manifest CSV")


def chosen_sections(viewer, source: str, manifest):
    """The training sections a panel's "sections" choice names: a manifest path or ``[Section]``."""
    if source == SOURCES[1]:
        if not manifest:
            raise HistoExprError("choose a section manifest CSV")
        return str(manifest)
    sec = Session(viewer).section()
    if sec is None:
        raise HistoExprError("open a slide and its spots with the 'Slide & spots' panel first, "
                             "or train from a manifest")
    return [sec]


class TrainExpressionWidget(PanelMixin, Container):
    """Train a BrST-Net-style expression model without leaving napari."""

    SETTINGS = {"source": "_source", "manifest": "_manifest", "n_genes": "_n_genes", "genes": "_genes",
                "backbone": "_backbone", "epochs": "_epochs", "batch_size": "_batch", "lr": "_lr",
                "window_um": "_window", "px": "_px", "aux": "_aux", "device": "_device", "out": "_out",
                "encoder": "_encoder", "head": "_head", "subspot_tokens": "_tokens", "finetune_epochs": "_finetune"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        d = TrainConfig()
        self._viewer = viewer
        self.summary = None
        self._source = ComboBox(label="sections", choices=list(SOURCES), value=SOURCES[0])
        self._manifest = FileEdit(label="manifest", mode="r", filter="*.csv", nullable=True)
        self._manifest.tooltip = "Section manifest CSV: section,patient,image,spots,counts,clusters,mpp"
        self._n_genes = SpinBox(label="top genes", value=d.n_genes, min=1, max=20000)
        self._genes = LineEdit(label="or genes")
        self._genes.tooltip = "Comma-separated gene names to predict instead of the top genes"
        self._backbone = ComboBox(label="backbone", choices=list(BACKBONE_NAMES), value=d.backbone)
        self._epochs = SpinBox(label="epochs", value=d.epochs, min=1, max=1000)
        self._batch = SpinBox(label="batch size", value=d.batch_size, min=2, max=1024)
        self._lr = FloatSpinBox(label="learning rate", value=d.lr, min=1e-6, max=1.0, step=1e-4)
        self._window = FloatSpinBox(label="window µm", value=d.window_um, min=10.0, max=2000.0)
        self._px = SpinBox(label="patch px", value=d.px, min=16, max=1024)
        self._aux = CheckBox(label="auxiliary head", value=d.max_aux > 0)
        self._device = ComboBox(label="device", choices=list(DEVICES), value=d.device)
        self._encoder = FileEdit(label="pretrained encoder", mode="r", nullable=True)
        self._encoder.tooltip = ("Optional: a pretrained encoder's weights file (UNI, Virchow2, H-optimus, ...; for a "
                                 "Hugging Face folder pick its config.json). A head is then fitted on its frozen "
                                 "features at the encoder's own window and size (backbone, epochs, window and px "
                                 "are not used)")
        self._head = ComboBox(label="head", choices=list(HEADS), value="ridge")
        self._tokens = CheckBox(label="token map (sub-spot)", value=False)
        self._tokens.tooltip = ("With an encoder: fit the head on the mean of its patch tokens inside each spot, so "
                                "maps have one value per token (8 µm for a /16 ViT)")
        self._finetune = SpinBox(label="fine-tune epochs", value=0, min=0, max=100)
        self._finetune.tooltip = ("With an encoder and the ridge head: then fine-tune the encoder for this many "
                                  "epochs (0: frozen; slow on a CPU). The best held-out epoch is kept")
        self._out = FileEdit(label="save to", mode="d", nullable=True)
        self._train_btn = PushButton(text="Train")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="Choose sections and a folder to save the model.")
        super().__init__(widgets=[
            self._source, self._manifest, self._n_genes, self._genes, self._backbone, self._epochs,
            self._batch, self._lr, self._window, self._px, self._aux, self._device, self._encoder, self._head,
            self._tokens, self._finetune, self._out, self._train_btn, self._cancel_btn, self._status,
        ])
        self.curve = LossCurve()
        self.native.layout().addWidget(self.curve.canvas)
        self._train_btn.changed.connect(self.start)
        self._cancel_btn.changed.connect(self.cancel)
        self._stop_workers_on_close("_worker")

    # ---------------------------------------------------------------------------------------------
    def _sections(self):
        return chosen_sections(self._viewer, self._source.value, self._manifest.value)

    def config(self) -> TrainConfig:
        genes = [g.strip() for g in (self._genes.value or "").split(",") if g.strip()] or None
        return TrainConfig(backbone=self._backbone.value, n_genes=int(self._n_genes.value), genes=genes,
                           max_aux=TrainConfig.max_aux if self._aux.value else 0, epochs=int(self._epochs.value),
                           batch_size=int(self._batch.value), lr=float(self._lr.value),
                           window_um=float(self._window.value), px=int(self._px.value),
                           device=self._device.value)

    def head_config(self) -> HeadConfig | None:
        """The head to fit when a pretrained encoder is chosen (else ``None``)."""
        path = Path(str(self._encoder.value)) if self._encoder.value else None
        if path is None or str(path) in ("", "."):
            return None
        if path.name == "config.json":  # a Hugging Face folder
            path = path.parent
        cfg = self.config()
        return HeadConfig(encoder=str(path), head=self._head.value, n_genes=cfg.n_genes, genes=cfg.genes,
                          device=cfg.device, subspot=bool(self._tokens.value),
                          finetune_epochs=int(self._finetune.value))

    def start(self, *_):
        """Start training (or fitting a head on a pretrained encoder) in a worker; returns it (or None
        after a notified error)."""
        if self._worker is not None:
            return None
        try:
            sections = self._sections()
            if not self._out.value:
                raise HistoExprError("choose a folder to save the model to")
            cfg = self.head_config() or self.config()
        except HistoExprError as e:
            return self._fail(e)
        self.curve.reset()
        self.summary = None
        self._train_btn.enabled = False
        self._cancel_btn.enabled = True
        self._status.value = "preparing patches…"
        steps = train_head_steps if isinstance(cfg, HeadConfig) else train_from_manifest_steps
        self._worker = start_worker(steps, sections, Path(self._out.value), cfg,
                                    desc="Training expression model", yielded=self._on_event,
                                    returned=self._on_done, errored=self._on_error, finished=self._on_finished)
        return self._worker

    def cancel(self, *_):
        if self._worker is not None:
            self._status.value = "cancelling after the current step…"
            self._worker.quit()

    def _on_event(self, ev: dict):
        if self._closed:
            return
        stage = ev.get("stage")
        if stage == "step":
            self.curve.add_step(ev["loss"], ev["steps"])
            if ev["step"] % 5 == 0 or ev["step"] == ev["steps"]:
                epochs = ev.get("epochs", self._epochs.value)
                self._status.value = (f"{ev.get('what', 'epoch')} {ev['epoch'] + 1}/{epochs}, step "
                                      f"{ev['step']}/{ev['steps']}, loss {ev['loss']:.3f}")
        elif stage == "epoch":
            self.curve.add_epoch(ev)
            self._status.value = epoch_line(ev)
        elif "msg" in ev:
            self._status.value = ev["msg"]

    def _on_done(self, summary: dict):
        self.summary = summary
        if self._closed:
            return
        line = (f"{summary['head']} head on {summary['encoder']} fitted in {summary['head_fit_s']:.1f} s"
                if "head" in summary else summary_line(summary))
        self._status.value = f"saved to {self._out.value}: {line}"

    def _on_error(self, exc: Exception):
        from napari.utils.notifications import show_error

        msg = str(exc) if isinstance(exc, HistoExprError) else f"{type(exc).__name__}: {exc}"
        self._status.value = f"error: {msg}"
        show_error(f"Training failed: {msg}")

    def _on_finished(self):
        if self._closed:
            self._worker = None
            return
        if self.summary is None and not self._status.value.startswith("error"):
            out = Path(self._out.value)
            kept = "the model saved so far is kept" if (out / "model.json").exists() else "nothing saved yet"
            self._status.value = f"cancelled; {kept} (checkpoint.pt can resume)"
        self._worker = None
        self._train_btn.enabled = True
        self._cancel_btn.enabled = False
