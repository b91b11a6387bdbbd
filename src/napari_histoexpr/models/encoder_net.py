"""A pretrained encoder of the user's (loaded from its own file, frozen) with a small head on its
features, shaped like the networks trained here (``backbone``, ``head``, ``pixel_mean``/``pixel_std``,
``features``) so every prediction path runs it: the expression models' heads
(:mod:`napari_histoexpr.models.expression`) and the segmenter's class head
(:mod:`napari_histoexpr.models.segmenter`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .encoder_files import cell_map_of


class EncoderNet(nn.Module):
    """A pretrained encoder of the user's (frozen, loaded from its own file) with a head fitted on its
    features: the same interface as :class:`ExpressionNet` (``backbone``, ``head``, ``pixel_mean``,
    ``pixel_std``, ``features``; ``(main, None)`` from a forward pass), so every prediction path runs it.
    ``head`` is ``"ridge"`` (one linear layer: PCA and ridge folded together) or ``"mlp"`` (linear,
    GELU, linear); it maps the encoder's embedding (or, ``on_cells``, one cell of its cell map: a
    sub-spot head) to z-scored targets."""

    def __init__(self, encoder, n_genes: int, head: str = "ridge", hidden: int = 256, on_cells: bool = False):
        super().__init__()
        self.backbone = encoder.net
        self.encoder_kind = encoder.kind
        dim = encoder.cell_dim if on_cells else encoder.dim
        self.dropout = nn.Identity()
        self.head = (nn.Linear(dim, n_genes) if head == "ridge" else
                     nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_genes)))
        self.aux_head = None
        self.register_buffer("pixel_mean", torch.tensor(encoder.kind.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(encoder.kind.std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def fully_convolutional(self) -> bool:
        """Whether the encoder has a feature map to pool densely (CNNs; a ViT runs patch by patch)."""
        return hasattr(self.backbone, "feature_map")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.pixel_mean) / self.pixel_std)

    def cell_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, cells, cells)``: a ViT's patch tokens, or a CNN encoder's last feature map."""
        return cell_map_of(self.backbone, (x - self.pixel_mean) / self.pixel_std)

    def forward(self, x: torch.Tensor):
        return self.head(self.features(x)), None


def load_encoder_of(meta: dict, where: str, device: str | torch.device = "cpu"):
    """The encoder a model folder's ``meta["encoder"]`` names (path + SHA-256), checked; a moved or
    changed file is a named error that says how to point at it."""
    from .encoder_files import file_sha256, load_encoder

    enc = meta["encoder"]
    path = Path(where) / enc["path"]  # a relative path (a fine-tuned encoder) lives in the model folder
    relink = f"point the model at it with `histoexpr relink --model {where} --encoder NEW_PATH`"
    if not path.exists():
        raise ModelFileError(f"{where}: its encoder file {path} ({enc['name']}) is not there any more; {relink}")
    if file_sha256(path) != enc["sha256"]:
        raise ModelFileError(f"{where}: its encoder file {path} changed since the head was fitted (SHA-256 differs); "
                             f"restore it, or {relink} (the same file elsewhere)")
    return load_encoder(path, enc["name"] if enc["name"] != "vit" else None, device)
