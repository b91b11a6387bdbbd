"""Spot expression from H&E patches (BrST-Net / ST-Net): a CNN backbone, a head for the target
genes and an auxiliary head (AuxNet) for the remaining expressed genes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifact import load_artifact, load_state_strict, meta_fields
from .backbones import build_backbone
from .protocol import DenseMapModel
from .runtime import for_inference, predict_batches, resolve_device

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

    def forward(self, x: torch.Tensor):
        f = self.dropout(self.features(x))
        aux = self.aux_head(f) if self.aux_head is not None else None
        return self.head(f), aux


class ExpressionModel(DenseMapModel):
    """A trained expression model loaded from ``MODEL_DIR`` for inference (no code unpickled)."""

    def __init__(self, net: ExpressionNet, meta: dict, device: torch.device):
        self.net = for_inference(net, device)
        self.meta = meta
        self.device = device
        self.genes: list[str] = list(meta["genes"])
        self.window_um = float(meta["window_um"])
        self.px = int(meta["input_px"])
        self.mean = np.asarray(meta["target"]["mean"], np.float32)
        self.std = np.asarray(meta["target"]["std"], np.float32)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | None = "auto") -> "ExpressionModel":
        state, meta = load_artifact(model_dir, kind=KIND)
        with meta_fields(model_dir):
            net = build_net(meta)
            load_state_strict(net, state, str(Path(model_dir)))
            return cls(net, meta, resolve_device(device))

    def read_patches(self, pyr, centres: np.ndarray) -> np.ndarray:
        """The model's input patches (its window, size and stain normalisation) at level-0 ``centres``."""
        from ..data.patches import extract_patches

        return extract_patches(pyr, centres, self.window_um, self.px, transform=self.patch_transform())

    def predict(self, patches: np.ndarray, batch_size: int = 128, features: bool = False) -> np.ndarray:
        """Predicted log1p-normalised expression ``(N, genes)`` (or backbone features)."""
        fn = self.net.features if features else (lambda x: self.net(x)[0])
        dim = self.net.backbone.num_features if features else len(self.genes)
        y = predict_batches(fn, patches, self.device, batch_size, dim)
        return y if features else y * self.std + self.mean

    # -- the two modes (implemented once in DenseMapModel) -------------------------------------------
    read_centres = read_patches

    def compute_centres(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.predict(patches, batch_size)

    def scale_output(self, y: np.ndarray) -> np.ndarray:
        return y * self.std + self.mean

    def dense_branches(self):
        from ..infer.dense import DenseBranch

        net = self.net
        return [DenseBranch(body=lambda x: net.backbone.feature_map((x - net.pixel_mean) / net.pixel_std),
                            head=net.head, px=self.px, window_um=self.window_um)]


def build_net(meta: dict) -> ExpressionNet:
    from ..errors import ModelFileError

    try:
        return ExpressionNet(meta["backbone"], len(meta["genes"]), len(meta.get("aux_genes", [])),
                             pixel_mean=tuple(meta["input"]["mean"]), pixel_std=tuple(meta["input"]["std"]))
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"model.json lacks a needed field ({e})") from e
