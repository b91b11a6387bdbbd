"""Spot expression from H&E patches (BrST-Net / ST-Net): a CNN backbone, a head for the target
genes and an auxiliary head (AuxNet) for the remaining expressed genes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifact import load_artifact, load_state_strict
from .backbones import build_backbone

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


def to_tensor(patches: np.ndarray, device="cpu", channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(patches)).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from ..errors import HistoExprError

        raise HistoExprError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


class ExpressionModel:
    """A trained expression model loaded from ``MODEL_DIR`` for inference (no code unpickled)."""

    def __init__(self, net: ExpressionNet, meta: dict, device: torch.device):
        self.net = net.eval().to(device)
        self.meta = meta
        self.device = device
        self.genes: list[str] = list(meta["genes"])
        self.window_um = float(meta["window_um"])
        self.px = int(meta["input_px"])
        self.mean = np.asarray(meta["target"]["mean"], np.float32)
        self.std = np.asarray(meta["target"]["std"], np.float32)
        self.stain = meta.get("stain_norm")
        self.amp = device.type == "cuda"
        if self.amp:
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | None = "auto") -> "ExpressionModel":
        state, meta = load_artifact(model_dir, kind=KIND)
        net = build_net(meta)
        load_state_strict(net, state, str(Path(model_dir)))
        return cls(net, meta, resolve_device(device))

    def patch_transform(self):
        """The stain normalisation the model was trained with (or ``None``)."""
        if not self.stain:
            return None
        from ..data.patches import macenko_normaliser

        return macenko_normaliser(self.stain)

    @torch.inference_mode()
    def predict(self, patches: np.ndarray, batch_size: int = 128, features: bool = False) -> np.ndarray:
        """Predicted log1p-normalised expression ``(N, genes)`` (or backbone features)."""
        outs = []
        for i in range(0, len(patches), batch_size):
            x = to_tensor(patches[i:i + batch_size], self.device, self.amp)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                y = self.net.features(x) if features else self.net(x)[0]
            outs.append(y.float().cpu().numpy())
        if not outs:
            return np.zeros((0, len(self.genes)), np.float32)
        y = np.concatenate(outs)
        return y if features else y * self.std + self.mean


def build_net(meta: dict) -> ExpressionNet:
    from ..errors import ModelFileError

    try:
        return ExpressionNet(meta["backbone"], len(meta["genes"]), len(meta.get("aux_genes", [])),
                             pixel_mean=tuple(meta["input"]["mean"]), pixel_std=tuple(meta["input"]["std"]))
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"model.json lacks a needed field ({e})") from e
