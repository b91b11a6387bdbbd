"""Spot expression from H&E patches (BrST-Net / ST-Net): a CNN backbone, a head for the target
genes and an auxiliary head (AuxNet) for the remaining expressed genes.

A **sub-spot** model (``meta["subspot"]``, iStar-style) is the same network read differently: every
cell of the backbone's feature map (``cell_um`` of slide, 32 input px) gets its own expression from
the head, and what was fitted to a measured spot is the mean of the cells inside the spot's disk
(weighted by the part of each cell inside it). The head is linear, so that mean is the head applied
to the disk-weighted mean of the cells' features: :func:`footprint_weights` gives those weights.
Each cell's value is read through a small Gaussian over its neighbours (``smooth_cells``, in
training and prediction alike: it removed most of the cell-to-cell noise of the maps).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.patches import extract_patches
from ..errors import ModelFileError
from ..models.dense import DenseBranch
from .artifact import load_artifact, load_state_strict, meta_fields
from .backbones import build_backbone
from .encoder_net import EncoderNet, load_encoder_of
from .protocol import DenseMapModel
from .runtime import for_inference, predict_batches, resolve_device
from .trust import DISTANCE, uncertainty_channel
from .trust_head import TrustedHead, load_trust

KIND = "expression"


class ExpressionNet(nn.Module):
    """``uint8``-ready network: normalises pixels itself, returns ``(main, aux)`` z-scored targets."""

    def __init__(self, backbone: str, n_genes: int, n_aux: int = 0, dropout: float = 0.1,
                 pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25)):
        super().__init__()
        self.backbone = build_backbone(backbone)
        nf = self.backbone.num_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(nf, n_genes)
        self.aux_head = nn.Linear(nf, n_aux) if n_aux > 0 else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a float batch ``(N, 3, H, W)`` in [0, 1]."""
        return self.backbone((x - self.pixel_mean) / self.pixel_std)

    def cell_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map ``(N, C, H / 32, W / 32)`` of a float batch in [0, 1]."""
        return self.backbone.feature_map((x - self.pixel_mean) / self.pixel_std)

    def forward(self, x: torch.Tensor):
        f = self.dropout(self.features(x))
        aux = self.aux_head(f) if self.aux_head is not None else None
        return self.head(f), aux


def smoothing_kernel(sigma_cells: float) -> np.ndarray:
    """The ``(w, w)`` Gaussian (``sigma_cells``, cut at 2 sigma, sum 1) a sub-spot model averages
    each cell's neighbourhood with; ``[[1]]`` for 0."""
    r = int(np.ceil(2 * sigma_cells)) if sigma_cells > 0 else 0
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2 * sigma_cells ** 2)) if r else np.ones(1)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def footprint_weights(cells: int, cell_um: float, disks: np.ndarray, supersample: int = 8,
                      smooth_cells: float = 0.0) -> np.ndarray:
    """``(cells, cells)`` weights of a patch's feature cells (``cell_um`` each, the patch centred on
    the origin) for a footprint made of ``disks`` (``(M, 3)``: centre ``dx, dy`` and radius, µm):
    the fraction of each cell inside the union of the disks, normalised to sum 1. With
    ``smooth_cells``, the mean over the footprint of the cells after :func:`smoothing_kernel`
    (the kernel spread over the weights, cut at the patch border)."""
    n = cells * supersample
    c = (np.arange(n) + 0.5) / supersample * cell_um - cells * cell_um / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = np.zeros((n, n), bool)
    for dx, dy, r in np.asarray(disks, float).reshape(-1, 3):
        inside |= (xx - dx) ** 2 + (yy - dy) ** 2 <= r * r
    w = inside.reshape(cells, supersample, cells, supersample).mean(axis=(1, 3))
    if w.sum() <= 0:
        w[cells // 2, cells // 2] = 1.0  # a footprint smaller than a cell sample: the centre cell
    if smooth_cells > 0:
        from scipy.signal import convolve2d

        w = convolve2d(w, smoothing_kernel(smooth_cells), mode="same")
    return (w / w.sum()).astype(np.float32)


def pooled_features(net: ExpressionNet, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` features of a batch pooled over its feature cells with ``weights``: one
    ``(cells, cells)`` map for the whole batch, or one per image ``(N, cells, cells)``."""
    fmap = net.cell_map(x)
    spec = "nchw,hw->nc" if weights.dim() == 2 else "nchw,nhw->nc"
    return torch.einsum(spec, fmap.float(), weights.to(fmap.device))


class ExpressionModel(DenseMapModel):
    """A trained expression model loaded from ``MODEL_DIR`` for inference (no code unpickled)."""

    #: whether the outputs include each gene's uncertainty and the distance (:meth:`set_uncertainty`)
    uncertainty = False

    def __init__(self, net: ExpressionNet, meta: dict, device: torch.device, trust=None):
        self.net = for_inference(net, device)
        self._int8 = {}  # (slide path, level-0 shape) -> int8 bodies; copies (with_uncertainty) share it
        #: the :class:`~napari_histoexpr.models.trust.TrustHead` fitted on the training spots, or ``None``
        self.trust = trust.to(device) if trust is not None else None
        self.meta = meta
        self.device = device
        self.genes: list[str] = list(meta["genes"])
        self.window_um = float(meta["window_um"])
        self.px = int(meta["input_px"])
        self.mean = np.asarray(meta["target"]["mean"], np.float32)
        self.std = np.asarray(meta["target"]["std"], np.float32)
        sub = meta.get("subspot")
        #: ``{"cell_um", "cells", "spot_um", ...}`` for a sub-spot model, else ``None``
        self.subspot = dict(sub) if sub else None
        if self.subspot is not None:
            self.cell_um = float(self.subspot["cell_um"])
            self.cells = int(self.subspot["cells"])
            self.smooth_cells = float(self.subspot.get("smooth_cells", 0.0))

    @property
    def outputs(self) -> list[str]:
        """The output channels: the genes, then (:attr:`uncertainty` on) each gene's uncertainty and the
        distance to the training spots."""
        if not self.uncertainty:
            return self.genes
        return self.genes + [uncertainty_channel(g) for g in self.genes] + [DISTANCE]

    def set_uncertainty(self, on: bool) -> None:
        """Add (or drop) the uncertainty channels to every prediction from now on; a named error for a
        model never calibrated (``histoexpr calibrate``)."""
        if on and self.trust is None:
            raise ModelFileError("this model has no uncertainty calibration (trust.json); models trained "
                                 "before it existed get one with `histoexpr calibrate MODEL --manifest TRAINING`")
        self.uncertainty = bool(on)

    def with_uncertainty(self, on: bool) -> "ExpressionModel":
        """This model with the uncertainty channels on or off, as a copy sharing its network and
        calibration: a prediction running with this one keeps the outputs it started with."""
        import copy

        m = copy.copy(self)  # shares the per-slide int8 bodies too (one dict per loaded model)
        m.set_uncertainty(on)
        return m

    def _head(self):
        """The head the maps are read through: the network's, with the trust head beside it when on."""
        return TrustedHead(self.net.head, self.trust) if self.uncertainty else self.net.head

    @property
    def default_step_um(self) -> float:
        """The grid step maps use unless asked otherwise: a sub-spot model's cell, else half the window."""
        return self.cell_um if self.subspot else self.window_um / 2

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | None = "auto") -> "ExpressionModel":
        """A model folder: a network trained here, or a head fitted on a pretrained encoder's features
        (``meta["encoder"]``: the encoder is loaded from its own file, the folder holds the head)."""
        state, meta = load_artifact(model_dir, kind=KIND)
        with meta_fields(model_dir):
            if meta.get("encoder"):
                enc = load_encoder_of(meta, str(model_dir))
                net = EncoderNet(enc, len(meta["genes"]), meta["encoder"]["head"],
                                 int(meta["encoder"].get("hidden", 256)), on_cells=bool(meta.get("subspot")))
                load_state_strict(net.head, {k[len("head."):]: v for k, v in state.items()},
                                  str(Path(model_dir)))
            else:
                net = build_net(meta)
                load_state_strict(net, state, str(Path(model_dir)))
            return cls(net, meta, resolve_device(device), load_trust(model_dir))

    def read_patches(self, pyr, centres: np.ndarray) -> np.ndarray:
        """The model's input patches (its window, size and stain normalisation) at level-0 ``centres``."""

        return extract_patches(pyr, centres, self.window_um, self.px, transform=self.patch_transform())

    def predict(self, patches: np.ndarray, batch_size: int = 128, features: bool = False,
                spot_um: float | None = None) -> np.ndarray:
        """Predicted log1p-normalised expression ``(N, genes)`` (or backbone features) of the spots
        the patches are centred on; a sub-spot model averages its cells over a ``spot_um`` disk
        (default: the spot size it was trained on), as in training."""
        pool = self.net.features
        if self.subspot is not None:
            w = torch.from_numpy(footprint_weights(self.cells, self.cell_um,
                                                   [(0.0, 0.0, (spot_um or self.subspot["spot_um"]) / 2)],
                                                   smooth_cells=self.smooth_cells)).to(self.device)
            pool = lambda x: pooled_features(self.net, x, w)  # noqa: E731
        head = self._head()
        fn = pool if features else (lambda x: head(pool(x)))
        dim = self.net.backbone.num_features if features else len(self.outputs)
        y = predict_batches(fn, patches, self.device, batch_size, dim)
        return y if features else self.scale_output(y)

    # -- the two modes (implemented once in DenseMapModel) -------------------------------------------
    @property
    def token_tiles(self) -> bool:
        """A sub-spot head on a ViT's patch tokens: its maps are read tile by tile (:meth:`read_centres`)."""
        return self.subspot is not None and not getattr(self.net, "fully_convolutional", True)

    @property
    def grid_tile_cells(self) -> int | None:
        """Grid tiles of one token tile (``cells`` cells of ``cell_um``: the model's window, on the same
        slide-fixed grid), so that a region predictor reads and runs every token tile once."""
        return self.cells if self.token_tiles else None

    def read_centres(self, pyr, centres: np.ndarray):
        """Patch mode: each centre's own patch; for a ViT's token map, the tiles of a grid of the model's
        window fixed on the slide (so every view sees the same tiles) that hold the centres, and each
        centre's token in its tile."""
        if not self.token_tiles:
            return self.read_patches(pyr, centres)
        centres = np.asarray(centres, float).reshape(-1, 2)
        tile = self.window_um / pyr.world_mpp
        ij = np.floor(centres / tile).astype(np.int64)
        tiles, inverse = np.unique(ij, axis=0, return_inverse=True)
        token = np.clip(np.floor((centres - ij * tile) / (tile / self.cells)).astype(np.int64), 0, self.cells - 1)
        patches = extract_patches(pyr, (tiles + 0.5) * tile, self.window_um, self.px, transform=self.patch_transform())
        return patches, inverse.ravel(), token

    def compute_centres(self, patches, batch_size: int = 256) -> np.ndarray:
        if self.token_tiles:  # every token of each tile through the head, then each centre's own token
            tiles, inverse, token = patches
            if not len(inverse):
                return np.zeros((0, len(self.genes)), np.float32)
            head = self._head()
            maps = predict_batches(lambda x: head(self.net.cell_map(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                                   tiles, self.device, batch_size, len(self.outputs))
            return self.scale_output(maps[inverse, :, token[:, 1], token[:, 0]])
        if self.subspot is None:
            return self.predict(patches, batch_size)
        # patch mode of a sub-spot map: each cell's own patch (its training context), its centre cell
        kern = smoothing_kernel(self.smooth_cells)
        w = np.zeros((self.cells, self.cells), np.float32)
        lo = self.cells // 2 - len(kern) // 2
        w[lo:lo + len(kern), lo:lo + len(kern)] = kern
        wt = torch.from_numpy(w).to(self.device)
        head = self._head()
        y = predict_batches(lambda x: head(pooled_features(self.net, x, wt)), patches, self.device,
                            batch_size, len(self.outputs))
        return self.scale_output(y)

    def scale_output(self, y: np.ndarray) -> np.ndarray:
        """z-scored predictions -> log1p values (the uncertainty channels are in log1p units already)."""
        g = len(self.genes)
        if y.shape[-1] == g:
            return y * self.std + self.mean
        out = np.array(y, np.float32, copy=True)
        out[..., :g] = y[..., :g] * self.std + self.mean
        return out

    def dense_branches(self):
        from .quantize import NormalisedBody

        net, head = self.net, self._head()
        if not getattr(net, "fully_convolutional", True):  # a ViT encoder: patch mode only
            return [DenseBranch(body=net.features, head=head, px=self.px, window_um=self.window_um,
                                fully_convolutional=False)]
        body = NormalisedBody(net.backbone, net.pixel_mean, net.pixel_std)
        if self.subspot is not None:  # one feature cell per grid cell (its smoothing window), training context
            kern = smoothing_kernel(self.smooth_cells)
            return [DenseBranch(body=body, head=head, px=32 * len(kern), window_um=self.cell_um * len(kern),
                                context_px=(self.px - 32) // 2, kernel=kern)]
        return [DenseBranch(body=body, head=head, px=self.px, window_um=self.window_um)]


def build_net(meta: dict) -> ExpressionNet:
    try:
        return ExpressionNet(meta["backbone"], len(meta["genes"]), len(meta.get("aux_genes", [])),
                             pixel_mean=tuple(meta["input"]["mean"]), pixel_std=tuple(meta["input"]["std"]))
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"model.json lacks a needed field ({e})") from e
