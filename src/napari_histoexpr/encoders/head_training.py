"""An expression model made of a pretrained encoder and a head fitted on its frozen features: the spots
of every manifest section are cut at the encoder's own window and size, their features come from the
cache (computed once), genes are chosen as for a network trained here, and the head is fitted in
seconds. The result is a normal model folder (``model.json`` + ``model.safetensors``) that names its
encoder by path and SHA-256 and holds only the head; predict, evaluate, the live view and the
segmenter load it as any other (:meth:`~napari_histoexpr.models.expression.ExpressionModel.load`)."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.section_data import DEFAULT_SPOT_UM, prepare_sections_steps
from ..errors import TrainingError
from ..files import atomic_write_bytes, atomic_write_json
from ..infer.feature_cache import default_cache, spot_features_steps
from ..io.manifest import as_sections
from ..models.catalog import HEADS
from ..train.expression_trainer import choose_genes
from .heads import fit_mlp_head, fit_ridge_head


@dataclass
class HeadConfig:
    encoder: str = ""  # the weights file or Hugging Face folder
    encoder_name: str | None = None  # one of ENCODERS where the file's shapes fit several
    head: str = "ridge"
    n_genes: int = 250
    genes: list[str] | None = None
    min_tissue: float = 0.3
    device: str = "auto"
    batch_size: int = 64
    features_cache: str | None = None  # default: a "features" folder beside the model folder
    hidden: int = 256
    seed: int = 0
    #: fit the head on the mean of the encoder's cells (a ViT's patch tokens, a CNN's feature cells)
    #: inside each spot, so that maps give one value per cell (a sub-spot model)
    subspot: bool = False
    #: how long to fine-tune the encoder with the ridge head, in passes over the spots (0: it stays frozen)
    finetune_epochs: int = 0
    finetune_lr: float = 1e-5
    extra: dict = field(default_factory=dict)


def train_head_steps(manifest, out_dir: str | os.PathLike, cfg: HeadConfig) -> Generator[dict, None, dict]:
    """Fit ``cfg.head`` on ``cfg.encoder``'s features of the spots of ``manifest``; yields progress,
    returns the summary (also written to ``training.json``)."""
    from ..models.artifact import save_artifact
    from ..models.encoder_files import load_encoder
    from ..models.expression import KIND, footprint_weights
    from ..models.runtime import resolve_device

    if cfg.head not in HEADS:
        raise TrainingError(f"unknown head {cfg.head!r}; use {' or '.join(HEADS)}")
    if cfg.finetune_epochs and (cfg.head != "ridge" or cfg.subspot):
        raise TrainingError("fine-tuning starts from the ridge head on the encoder's embedding: use --head ridge "
                            "without --subspot-tokens")
    device = resolve_device(cfg.device)
    yield {"stage": "encoder", "msg": f"loading the encoder {cfg.encoder}"}
    enc = load_encoder(cfg.encoder, cfg.encoder_name, device)
    kind = enc.kind
    sources = as_sections(manifest)
    data, _, _ = yield from prepare_sections_steps(sources, kind.window_um, kind.px, cfg.min_tissue)
    if sum(len(s) for s in data) < 8:
        raise TrainingError("too few spots under tissue to fit a head (need at least 8)")
    cache = Path(cfg.features_cache) if cfg.features_cache else default_cache(out_dir)
    pool = subspot = None
    if cfg.subspot:  # the cells inside a spot's disk, as a sub-spot model is fitted
        spot_um = next((s.spot_um for s in data if s.spot_um), DEFAULT_SPOT_UM)
        cells = enc.cells
        pool = footprint_weights(cells, kind.window_um / cells, [(0.0, 0.0, spot_um / 2)])
        subspot = {"cell_um": kind.window_um / cells, "cells": cells, "spot_um": spot_um, "smooth_cells": 0.0,
                   "cells_from": "patch tokens" if hasattr(enc.net, "patch_tokens") else "feature map"}
        yield {"stage": "encoder", "msg": f"sub-spot head: {cells} x {cells} cells of {kind.window_um / cells:g} µm, "
                                          f"fitted on the mean of the cells inside each {spot_um:g} µm spot"}
    t0 = time.perf_counter()
    feats = []
    for s in data:
        feats.append((yield from spot_features_steps(enc, s.name, s.patches, s.xy, cache, device, cfg.batch_size,
                                                     pool=pool)))
    t_feat = time.perf_counter() - t0
    genes, _, hvg = choose_genes(data, cfg.n_genes, 0, 1.0, cfg.genes)
    F = np.concatenate(feats)
    Yraw = np.concatenate([s.select(genes) for s in data])
    mean, std = Yraw.mean(0), Yraw.std(0) + 1e-6
    Y = (Yraw - mean) / std
    groups = np.concatenate([[i] * len(s) for i, s in enumerate(data)])
    yield {"stage": "head", "msg": f"fitting a {cfg.head} head on {len(F)} spots x {F.shape[1]} features"}
    t1 = time.perf_counter()
    if cfg.head == "ridge":
        state, info = fit_ridge_head(F, Y, groups)
    else:
        state, info = fit_mlp_head(F, Y, groups, hidden=cfg.hidden, seed=cfg.seed)
    t_head = time.perf_counter() - t1
    out = Path(out_dir)
    enc_block = {"path": str(Path(cfg.encoder).resolve()), "sha256": enc.sha256, "name": kind.name}
    if cfg.finetune_epochs:
        from safetensors.torch import save

        from .finetune import FINETUNED_FILE, finetune_steps

        t2 = time.perf_counter()
        enc_state, state, ft = yield from finetune_steps(enc, np.concatenate([s.patches for s in data]), Y, groups,
                                                         state, cfg.finetune_epochs, cfg.finetune_lr, device,
                                                         seed=cfg.seed)
        info = {**info, **ft, "finetune_s": round(time.perf_counter() - t2, 1)}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / FINETUNED_FILE, save(enc_state))
        from ..models.encoder_files import file_sha256

        # a converted Hugging Face encoder is written in timm's layout and recognised from it
        name = kind.name if kind.layout in ("timm-vit", "torchvision-resnet") else "vit"
        enc_block = {"path": FINETUNED_FILE, "sha256": file_sha256(out / FINETUNED_FILE), "name": name,
                     "finetuned_from": enc_block}
    meta = {
        "kind": KIND, "backbone": f"encoder:{kind.name}", "genes": genes, "aux_genes": [], "hvg50": hvg,
        "window_um": kind.window_um, "input_px": kind.px,
        "input": {"mean": list(kind.mean), "std": list(kind.std), "range": "rgb uint8 / 255"},
        "target": {"transform": "log1p(counts / total * 1e4), z-scored per gene", "mean": mean.tolist(),
                   "std": std.tolist()},
        "encoder": {**enc_block, "head": cfg.head, "hidden": cfg.hidden, "dim": enc.cell_dim if subspot else enc.dim,
                    "tokens": subspot["cells_from"] if subspot else kind.tokens, "um_per_px": kind.um_per_px},
        "subspot": subspot,
        "training": {"sections": [s.name for s in data], "n_spots": int(len(F)), "validation": None,
                     "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}},
        "metrics": info,
    }
    save_artifact(out, {f"head.{k}": v for k, v in state.items()}, meta)
    from ..models.expression import ExpressionModel
    from ..train.calibration import calibrate_steps

    # the frozen features are the head's input already; a fine-tuned encoder's are computed anew
    yield from calibrate_steps(ExpressionModel.load(out, cfg.device), out, data,
                               None if cfg.finetune_epochs else feats, sources=sources)
    summary = {"encoder": kind.name, "head": cfg.head, "spots": int(len(F)), "genes": len(genes),
               "features_s": round(t_feat, 2), "head_fit_s": round(t_head, 2), **info}
    atomic_write_json(out / "training.json", summary)
    yield {"stage": "done", "msg": f"{cfg.head} head on {kind.name} in {t_head:.1f} s "
                                   f"(inner-CV mean r {info.get('inner_cv_mean_r', info.get('held_out_mean_r')):.3f})"}
    return summary


def relink_encoder(model_dir, encoder_path) -> dict:
    """Point a model folder at its encoder's new place: the file must be the one the head was fitted on
    (same SHA-256). Returns the updated ``meta["encoder"]``."""
    import json

    from ..errors import ModelFileError
    from ..models.artifact import META
    from ..models.encoder_files import file_sha256

    model_dir, path = Path(model_dir), Path(encoder_path)
    meta = json.loads((model_dir / META).read_text())
    enc = meta.get("encoder")
    if not enc:
        raise ModelFileError(f"{model_dir}: not a model fitted on a pretrained encoder (nothing to relink)")
    if not path.exists():
        raise ModelFileError(f"encoder file not found: {path}")
    if file_sha256(path) != enc["sha256"]:
        raise ModelFileError(f"{path} is not the encoder this head was fitted on ({enc['name']}, SHA-256 "
                             f"{enc['sha256'][:12]}…); a head only fits the features of its own encoder file")
    enc["path"] = str(path.resolve())
    atomic_write_json(model_dir / META, meta)
    return enc
