"""What the slide-level models share: bags of tile features per slide, the per-fold feature
projection, bulk targets, patient-level cross-validation, tile heatmaps on the slide grid, and the
model file (safetensors + model.json, never pickled code)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistoExprError, ModelFileError, UnknownGeneError
from ..infer.grid import Grid, grid_layer_geometry
from ..models.artifact import load_artifact, load_state_strict, meta_fields, save_artifact
from .cohort import CohortSlide, patient_folds
from .features import features_path, load_features


@dataclass
class Bag:
    """The tile features of one slide: ``feats`` (n_tiles, F), level-0 ``(x, y)`` centres ``coords``."""

    id: str
    feats: np.ndarray
    coords: np.ndarray
    tile_um: float
    world_mpp: float
    attrs: dict = field(default_factory=dict)  # how the features were made (encoder, tile size)


def load_bags(slides: list[CohortSlide], features_dir: str | os.PathLike) -> list[Bag]:
    """The cached features of every slide (``histoexpr features`` writes them); one named error for
    the slides that have none, and for features made by different encoders."""

    missing = [s.id for s in slides if not features_path(features_dir, s.id).exists()]
    if missing:
        raise HistoExprError(f"no tile features in {features_dir} for {len(missing)} slide(s): "
                             f"{', '.join(missing[:5])}; run `histoexpr features` first")
    bags, encoders = [], set()
    for s in slides:
        bag = bag_from_features(features_path(features_dir, s.id), s.id)
        if len(bag.feats) == 0:
            raise HistoExprError(f"slide {s.id}: no tissue tiles were found")
        encoders.add((bag.attrs["encoder"], bag.tile_um, bag.attrs["px"]))
        bags.append(bag)
    if len(encoders) > 1:
        raise HistoExprError(f"the features in {features_dir} come from different encoders or tilings: "
                             f"{sorted(encoders)}")
    return bags


def bag_from_features(path: str | os.PathLike, slide_id: str | None = None) -> Bag:
    f, c, a = load_features(path)
    return Bag(slide_id or Path(path).stem, f, c, float(a["tile_um"]), float(a["world_mpp"]), a)


def feature_meta(bags: list[Bag]) -> dict:
    """What a model must know to get features for a new slide: the encoder and the tiling."""
    a = bags[0].attrs
    return {"encoder": a.get("encoder"), "encoder_source": a.get("encoder_source"), "tile_um": bags[0].tile_um,
            "px": a.get("px")}


class Projector:
    """Standardise tile features and project them on their first principal components (fitted on
    the training tiles of a fold only): a small cohort cannot fit a 512-wide input layer."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, comps: np.ndarray):
        self.mean, self.std, self.comps = (np.asarray(a, np.float32) for a in (mean, std, comps))

    @classmethod
    def fit(cls, feats: list[np.ndarray], n_components: int = 32, seed: int = 0,
            max_rows: int = 20000) -> "Projector":
        x = np.concatenate(feats).astype(np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        if not n_components or n_components >= x.shape[1]:
            return cls(mean, std, np.eye(x.shape[1]))
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(seed)
        z = (x[rng.choice(len(x), min(len(x), max_rows), replace=False)] - mean) / std
        k = min(n_components, *z.shape)
        pca = PCA(n_components=k, whiten=True, svd_solver="full").fit(z)  # unit variance per component
        # stored as plain arrays (safetensors): PCA's own centre folded into the mean, its whitening into comps
        comps = pca.components_.T / np.sqrt(np.maximum(pca.explained_variance_, 1e-12))[None, :]
        return cls(mean + std * pca.mean_, std, comps)

    @property
    def dim(self) -> int:
        return int(self.comps.shape[1])

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return (((feats - self.mean) / self.std) @ self.comps).astype(np.float32)

    def state(self) -> dict:
        import torch

        return {f"proj.{k}": torch.from_numpy(getattr(self, k).copy()) for k in ("mean", "std", "comps")}

    @classmethod
    def from_state(cls, state: dict) -> "Projector":
        return cls(*(state.pop(f"proj.{k}").numpy() for k in ("mean", "std", "comps")))


def log_targets(Y) -> np.ndarray:
    """Bulk targets: log(1 + expression)."""
    y = np.asarray(Y, np.float64)
    if (y < 0).any():
        raise HistoExprError("bulk expression has negative values: give raw counts or TPM (not log values)")
    return np.log1p(y)


def choose_bulk_genes(B, n: int = 250, genes: list[str] | None = None) -> list[str]:
    """The requested genes (named error for unknown ones) or the ``n`` most variable log1p genes."""
    import difflib


    if genes:
        for g in genes:
            if g not in B.columns:
                raise UnknownGeneError(g, difflib.get_close_matches(g, list(B.columns), n=3))
        return list(genes)
    v = np.log1p(B.to_numpy(np.float64)).var(0)
    order = np.argsort(-v, kind="stable")
    return [B.columns[i] for i in order[:n] if v[i] > 0]


def cross_validate(slides: list[CohortSlide], k: int, seed: int,
                   run_fold: Callable[[int, np.ndarray, np.ndarray], Generator[dict, None, dict]]
                   ) -> Generator[dict, None, list[dict]]:
    """Patient-level k-fold: ``run_fold(fold, train_idx, test_idx)`` per fold (a generator that
    yields progress and returns its fold record)."""
    folds = patient_folds(slides, k, seed)
    out = []
    for f, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(slides)), test)
        rec = yield from run_fold(f, train, test)
        rec = {"fold": f, "test_ids": [slides[i].id for i in test], **rec}
        out.append(rec)
        yield {"stage": "fold", "fold": f, "folds": k,
               **{key: v for key, v in rec.items() if isinstance(v, (int, float))}}
    return out


def tile_raster(bag: Bag, values: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-tile values as a 2D raster on the tile grid (NaN off tissue) with the ``scale`` and
    ``translate`` that put it on the slide in the µm world."""
    step = bag.tile_um / bag.world_mpp
    col = np.floor(bag.coords[:, 0] / step).astype(int)
    row = np.floor(bag.coords[:, 1] / step).astype(int)
    img = np.full((row.max() + 1 if len(row) else 1, col.max() + 1 if len(col) else 1), np.nan, np.float32)
    img[row, col] = values

    return img, grid_layer_geometry(Grid(step, *img.shape), bag.world_mpp)


# ---- model files -----------------------------------------------------------------------------------
def save_model(out: str | os.PathLike, kind: str, net, projector: Projector, meta: dict) -> Path:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state.update(projector.state())
    return save_artifact(out, state, dict(meta, kind=kind))


def load_model_parts(model_dir: str | os.PathLike, kind: str, build: Callable[[dict], object]):
    """``(net, projector, meta)`` from a model folder of this ``kind``."""

    state, meta = load_artifact(model_dir, kind=kind)
    try:
        proj = Projector.from_state(state)
    except KeyError as e:
        raise ModelFileError(f"{model_dir}: the weights lack the feature projection ({e})") from e
    with meta_fields(model_dir):
        net = build(meta)
        load_state_strict(net, {k[4:]: v for k, v in state.items() if k.startswith("net.")}, str(model_dir))
    return net.eval(), proj, meta


class SlideModel:
    """A trained slide-level network with its feature projection and ``meta`` (model.json)."""

    kind = ""

    def __init__(self, net, projector: Projector, meta: dict, device="auto"):
        from ..models.runtime import resolve_device

        self.device = resolve_device(device)
        self.net, self.projector, self.meta = net.eval().to(self.device), projector, meta

    @staticmethod
    def build_net(meta: dict):
        raise NotImplementedError

    def save(self, out: str | os.PathLike) -> Path:
        return save_model(out, self.kind, self.net, self.projector, self.meta)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto"):
        net, proj, meta = load_model_parts(model_dir, cls.kind, cls.build_net)
        return cls(net, proj, meta, device)
