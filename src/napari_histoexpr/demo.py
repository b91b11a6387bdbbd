"""The demo's expression model: trained once (cached) on two generated sections that are not the
displayed one (headless; ``histoexpr demo`` shows it with :mod:`napari_histoexpr.viewer_app`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .datasets import PLANTED_GENES, make_demo
from .io.manifest import Section, write_manifest
from .steps import drain
from .train.expression_trainer import TrainConfig, epoch_line, train_from_manifest_steps

DEMO_GENES = ["ERBB2", "COL1A1", "PTPRC"]


def demo_model(out: Path, epochs: int = 12, progress: Callable[[str], None] = print) -> Path:
    """Train (once; cached) the demo expression model on two generated sections that are not the
    displayed one; returns the model folder."""
    import json


    out = Path(out)
    model_dir = out / "model"
    genes = [g for gs in PLANTED_GENES.values() for g in gs]
    cfg = TrainConfig(genes=genes, max_aux=10, window_um=100.0, px=64, epochs=epochs, lr=1e-3,
                      patience=epochs, batch_size=32, device="auto", seed=0)
    stamp = json.dumps({"epochs": epochs, "genes": genes, "v": 2})
    if (model_dir / "model.json").exists() and (model_dir / "demo.json").exists() \
            and (model_dir / "demo.json").read_text() == stamp:
        return model_dir
    secs = []
    for i, seed in enumerate((101, 102)):
        progress(f"generating training section {i + 1}/2")
        d = make_demo(out / f"train{i + 1}", size=2048, mpp=1.0, seed=seed)
        secs.append(Section(section=f"train{i + 1}", patient=f"P{i + 1}", image=d.slide, spots=d.spots))
    manifest = write_manifest(out / "train.csv", secs)

    def show(ev):
        if ev.get("stage") == "epoch":
            progress(f"training the demo model: {epoch_line(ev)}")
        elif ev.get("stage") in ("data", "baselines"):
            progress(ev["msg"])

    drain(train_from_manifest_steps(manifest, model_dir, cfg), show)
    (model_dir / "demo.json").write_text(stamp)
    return model_dir
