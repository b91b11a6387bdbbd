"""Tile features shared by the slide-level models (HE2RNA, …): every tissue tile of a slide encoded
once, stored in a chunked zarr with its coordinates; resumable.

``FEATURES.zarr``: ``features`` (n_tiles, F) float32, ``coords`` (n_tiles, 2) level-0 ``(x, y)`` tile
centres, ``done`` (n_tiles,) uint8; attributes: encoder description, tile µm / px, slide, mpp.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np

from ..data.patches import extract_patches, tissue_fraction_at, tissue_mask
from ..errors import HistoExprError
from ..infer.distributed import run_on_cluster
from ..io.slides import open_slide
from ..models.artifact import META
from ..steps import drain

ATTR = "histoexpr_features"


def features_path(features_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where a cohort slide's tile features live: ``FEATURES_DIR/<id>.zarr``."""
    return Path(features_dir) / f"{slide_id}.zarr"


class Encoder:
    """Backbone features of uint8 patches: a trained expression model's backbone (or, for a head fitted
    on a pretrained encoder, that encoder), a pretrained encoder's weights file or Hugging Face folder
    (:func:`~napari_histoexpr.models.encoder_files.load_encoder`: its own tile size, resolution and
    normalisation), ``BACKBONE:WEIGHTS`` (torchvision-style), or a randomly initialised backbone (seeded)."""

    def __init__(self, source: str = "resnet18", device: str = "auto", seed: int = 0, name: str | None = None):
        import torch

        from ..models.backbones import BACKBONES, build_backbone, load_init_weights
        from ..models.expression import ExpressionModel
        from ..models.runtime import resolve_device

        self.device = resolve_device(device)
        self.source = str(source)
        #: the patch geometry the encoder was trained on (an expression model's window), else None
        self.window_um, self.px = None, None
        #: the stain normalisation an expression model was trained with, applied to every tile
        self.transform = None
        p = Path(source)
        if p.is_dir() and (p / META).exists():
            m = ExpressionModel.load(p, self.device)
            self.net, self.mean, self.std = m.net.backbone, m.net.pixel_mean, m.net.pixel_std
            self.window_um, self.px = m.window_um, m.px
            self.transform = m.patch_transform()
            self.describe = (f"expression model backbone {p} ({m.meta['backbone']}"
                             f"{', Macenko stain normalisation' if self.transform else ''})")
        elif p.exists():  # a pretrained encoder's own file or Hugging Face folder
            from ..models.encoder_files import load_encoder

            enc = load_encoder(p, name, self.device)
            self.net, self.window_um, self.px = enc.net, enc.kind.window_um, enc.kind.px
            self.mean = torch.tensor(enc.kind.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.std = torch.tensor(enc.kind.std, dtype=torch.float32).view(1, 3, 1, 1)
            self.describe = f"pretrained encoder {enc.kind.name} ({p.name}, SHA-256 {enc.sha256[:12]})"
            self.num_features = enc.dim
        else:
            name, _, weights = source.partition(":")
            if name not in BACKBONES:
                raise HistoExprError(f"encoder {source!r}: a model folder, or BACKBONE[:WEIGHTS_FILE] with "
                                     f"BACKBONE one of {', '.join(BACKBONES)}")
            torch.manual_seed(seed)
            self.net = build_backbone(name)
            if weights:
                load_init_weights(self.net, weights)
            self.mean = torch.full((1, 3, 1, 1), 0.5)
            self.std = torch.full((1, 3, 1, 1), 0.25)
            self.describe = f"{name} ({'weights ' + weights if weights else f'random init, seed {seed}'})"
        self.net = self.net.eval().to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        self.dim = int(getattr(self, "num_features", None) or self.net.num_features)

    def __call__(self, patches: np.ndarray, batch: int = 256) -> np.ndarray:
        from ..models.runtime import predict_batches

        return predict_batches(lambda x: self.net((x - self.mean) / self.std), patches, self.device, batch, self.dim)


def tile_centres(pyr, tile_um: float, min_tissue: float = 0.5) -> np.ndarray:
    """Level-0 ``(x, y)`` centres of the tissue tiles of a ``tile_um`` grid."""

    step = tile_um / pyr.world_mpp
    h, w = pyr.level0_shape
    ys, xs = np.meshgrid((np.arange(int(h // step)) + 0.5) * step, (np.arange(int(w // step)) + 0.5) * step,
                         indexing="ij")
    c = np.stack([xs.ravel(), ys.ravel()], 1)
    mask, ds = tissue_mask(pyr)
    return c[tissue_fraction_at(mask, ds, c, step / 2) >= min_tissue]


def extract_features_steps(encoder: Encoder, slide, out: str | os.PathLike, tile_um: float = 112.0,
                           px: int = 224, chunk: int = 512) -> Generator[dict, None, Path]:
    """Encode every tissue tile of ``slide`` into ``out`` (a .zarr folder); resumes a partial run."""
    import zarr


    pyr = open_slide(slide) if isinstance(slide, (str, os.PathLike)) else slide
    out = Path(out)
    centres = tile_centres(pyr, tile_um)
    attrs = {"encoder": encoder.describe, "encoder_source": encoder.source, "tile_um": tile_um, "px": px,
             "slide": str(pyr.path),
             "world_mpp": pyr.world_mpp, "n_tiles": int(len(centres)), "dim": encoder.dim}
    g = None
    if out.exists():
        g = zarr.open_group(str(out), mode="a")
        old = dict(g.attrs).get(ATTR, {})
        if any(old.get(k) != attrs[k] for k in ("encoder", "tile_um", "px", "slide", "n_tiles", "dim")):
            raise HistoExprError(f"{out} holds features of another encoder, tiling or slide; use another folder")
    if g is None:
        g = zarr.open_group(str(out), mode="w")
        g.create_array("features", shape=(len(centres), encoder.dim), chunks=(chunk, encoder.dim), dtype="float32")
        g.create_array("coords", shape=(len(centres), 2), chunks=(max(1, len(centres)), 2), dtype="float64")
        g.create_array("done", shape=(max(1, len(centres)),), chunks=(max(1, len(centres)),), dtype="uint8",
                       fill_value=0)
        if len(centres):
            g["coords"][:] = centres
        g.attrs[ATTR] = dict(attrs, complete=False)
    done = g["done"][:]
    todo = [i for i in range(0, len(centres), chunk) if not done[i:min(i + chunk, len(centres))].all()]
    for k, i in enumerate(todo):
        j = min(i + chunk, len(centres))
        g["features"][i:j] = encoder(extract_patches(pyr, centres[i:j], tile_um, px, transform=encoder.transform))
        g["done"][i:j] = 1
        yield {"stage": "tile", "done": k + 1, "total": len(todo)}
    g.attrs[ATTR] = dict(attrs, complete=True)
    return out


def feature_count(path: str | os.PathLike) -> int:
    """Number of tiles of a features folder (its attributes only)."""
    import zarr

    return int(dict(zarr.open_group(str(path), mode="r").attrs)[ATTR]["n_tiles"])


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    import zarr

    g = zarr.open_group(str(path), mode="r")
    a = dict(g.attrs).get(ATTR)
    if not a or not a.get("complete"):
        raise HistoExprError(f"{path}: no complete tile features (run `histoexpr features` again to finish)")
    return np.asarray(g["features"]), np.asarray(g["coords"]), a


DEFAULT_TILE_UM, DEFAULT_PX = 112.0, 224  # 224 px at 0.5 µm/px


def tile_geometry(encoder: Encoder, tile_um: float | None = None, px: int | None = None) -> tuple[float, int]:
    """The tile size: as asked, else the expression model's own window, else 224 px at 0.5 µm/px."""
    return (float(tile_um or encoder.window_um or DEFAULT_TILE_UM), int(px or encoder.px or DEFAULT_PX))


def _features_task(source, slide, out, tile_um, px, device, seed, name=None) -> dict:
    """One slide in a dask worker (its lazy slide reads run on the worker's own threads)."""
    import dask

    from ..models.runtime import worker_device

    with dask.config.set(scheduler="threads"):
        enc = Encoder(source, worker_device(device), seed, name)
        drain(extract_features_steps(enc, slide, out, tile_um, px))
        return {"out": str(out), "tiles": feature_count(out)}


def extract_cohort_steps(slides, source: str, out_dir: str | os.PathLike, tile_um: float | None = None,
                         px: int | None = None, device: str = "auto", seed: int = 0, scheduler: str | None = None,
                         cluster: bool = False, progress=None, encoder_name: str | None = None
                         ) -> Generator[dict, None, dict]:
    """Tile features of every cohort slide into ``out_dir/<id>.zarr`` (resumes partial ones); a
    pretrained encoder's tiles are its own window and size unless ``tile_um``/``px`` say otherwise.

    In this process by default (one encoder, slide after slide); on dask.distributed with
    ``scheduler`` (an address) or ``cluster=True`` (a LocalCluster, one worker per GPU)."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = Encoder(source, device, seed, encoder_name)  # fails fast on a bad encoder; gives the default tiling
    tile_um, px = tile_geometry(enc, tile_um, px)
    if scheduler or cluster:
        jobs = {s.id: (source, str(s.slide), str(features_path(out_dir, s.id)), tile_um, px, device, seed,
                       encoder_name)
                for s in slides}
        del enc
        res = run_on_cluster(_features_task, jobs, scheduler, device, progress,
                             lambda k, r: f"{k}: {r['tiles']} tiles")
        yield {"stage": "slide", "done": len(slides), "total": len(slides), "msg": f"{len(slides)} slides encoded"}
        return res
    res = {}
    for i, s in enumerate(slides):
        out = features_path(out_dir, s.id)
        for ev in extract_features_steps(enc, s.slide, out, tile_um, px):
            yield {**ev, "slide": s.id}
        res[s.id] = {"out": str(out), "tiles": feature_count(out)}
        yield {"stage": "slide", "done": i + 1, "total": len(slides),
               "msg": f"{s.id}: {res[s.id]['tiles']} tiles ({i + 1}/{len(slides)} slides)"}
    return res
