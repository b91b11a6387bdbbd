"""The morphology segmenter's network (a patch classifier) and a saved segmenter loaded for dense
prediction (one classifier per patch size; their probabilities averaged).

A segmenter fitted on a pretrained encoder (``meta["encoder"]``: path, SHA-256, name) holds only its
class head; the encoder is read from its own file, CNNs run densely and ViTs patch by patch."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ..data.patches import extract_patches
from ..models.dense import DenseBranch
from .artifact import load_artifact, load_state_strict, meta_fields
from .backbones import build_backbone
from .encoder_net import EncoderNet, load_encoder_of
from .protocol import DenseMapModel
from .runtime import for_inference, predict_batches, resolve_device

KIND = "segmenter"


class PatchClassifier(nn.Module):
    """Backbone + dropout + linear head over classes; normalises its [0, 1] input itself."""

    def __init__(self, backbone: str, n_classes: int, mean=(0.5,) * 3, std=(0.25,) * 3):
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.backbone.num_features, n_classes)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return self.head(self.dropout(self.backbone((x - self.pixel_mean) / self.pixel_std)))


class EncoderClassifier(EncoderNet):
    """A pretrained encoder (frozen) + a linear class head: :class:`PatchClassifier`'s interface."""

    def __init__(self, encoder, n_classes: int):
        super().__init__(encoder, n_classes, "ridge")

    def forward(self, x):
        return self.head(self.features(x))


def class_probabilities(net: nn.Module, patches: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities ``(N, classes)`` of uint8 patches."""
    net.eval()
    return predict_batches(lambda x: torch.softmax(net(x).float(), 1), patches, device, batch_size, 1)


class Segmenter(DenseMapModel):
    """A saved segmenter; a :class:`~napari_histoexpr.models.protocol.MapModel` whose ``outputs`` are
    its class names and whose values are class probabilities."""

    def __init__(self, nets, meta, device):
        self.nets, self.meta, self.device = nets, meta, device
        self.classes = list(meta["classes"])
        self.windows = [float(w) for w in meta["windows_um"]]
        self.window_um = max(self.windows)
        self.px = int(meta["px"])

    @property
    def outputs(self) -> list[str]:
        """The output channels: the class names."""
        return self.classes

    def smooth_cells(self, step_um: float) -> int:
        """Side (odd, in grid cells of ``step_um``) of the neighbourhood whose class probabilities
        are averaged (``meta["smooth_um"]``; 1 = none)."""
        um = float(self.meta.get("smooth_um") or 0.0)
        k = max(1, int(round(um / step_um))) if um > 0 and step_um > 0 else 1
        return k if k % 2 else k + 1

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | None = "auto") -> "Segmenter":
        state, meta = load_artifact(model_dir, kind=KIND)
        dev = resolve_device(device)
        nets = []
        with meta_fields(model_dir):
            if meta.get("encoder"):  # a class head on a pretrained encoder's features
                net = EncoderClassifier(load_encoder_of(meta, str(model_dir)), len(meta["classes"]))
                load_state_strict(net.head, {k[len("w0.head."):]: v for k, v in state.items()}, str(model_dir))
                return cls([for_inference(net, dev)], meta, dev)
            for i in range(len(meta["windows_um"])):
                net = PatchClassifier(meta["backbone"], len(meta["classes"]))
                load_state_strict(net, {k[len(f"w{i}."):]: v for k, v in state.items() if k.startswith(f"w{i}.")},
                                  str(model_dir))
                nets.append(for_inference(net, dev))
            return cls(nets, meta, dev)

    # -- the two modes (implemented once in DenseMapModel): one branch per patch size -----------------
    def read_centres(self, pyr, centres: np.ndarray) -> list[np.ndarray]:
        return [extract_patches(pyr, centres, w, self.px, transform=self.patch_transform()) for w in self.windows]

    def compute_centres(self, patches: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        return np.mean([class_probabilities(net, p, self.device, batch_size) for net, p in zip(self.nets, patches)],
                       axis=0)

    def dense_branches(self):
        from .quantize import NormalisedBody

        def branch(net, window):
            if not getattr(net, "fully_convolutional", True):  # a ViT encoder: patch mode only
                return DenseBranch(body=net.features, head=lambda f: torch.softmax(net.head(f).float(), 1),
                                   px=self.px, window_um=window, fully_convolutional=False)
            return DenseBranch(body=NormalisedBody(net.backbone, net.pixel_mean, net.pixel_std),
                               head=lambda f: torch.softmax(net.head(f).float(), 1), px=self.px, window_um=window)

        return [branch(net, w) for net, w in zip(self.nets, self.windows)]
