"""Networks of the slide-level models over bags of tile features (HE2RNA, multi-task, G-HANet)."""

from __future__ import annotations

import torch
from torch import nn


class TileNet(nn.Module):
    """Per-tile MLP as 1x1 convolutions over ``(B, F, N)`` bags; optional per-tissue FiLM (MTM)."""

    def __init__(self, dim: int, n_genes: int, hidden: int = 128, dropout: float = 0.25, n_tissues: int = 0):
        super().__init__()
        self.inp = nn.Conv1d(dim, hidden, 1)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv1d(hidden, n_genes, 1)
        nn.init.zeros_(self.out.bias)  # targets are z-scored: start at the training mean
        self.film = None
        if n_tissues:
            self.film = nn.Embedding(n_tissues, 2 * hidden)
            nn.init.zeros_(self.film.weight)  # scale 1 + 0, shift 0: starts as the shared model

    def forward(self, x, tissue=None):
        h = torch.relu(self.inp(x))
        if self.film is not None:
            gamma, beta = self.film(tissue).chunk(2, dim=-1)
            h = h * (1 + gamma[..., None]) + beta[..., None]
        return self.out(self.drop(h))


class GHANetNet(nn.Module):
    """G-HANet: genomic-group tokens cross-attend the tiles (with per-group reconstruction heads),
    gated attention over tiles, the slide embedding attends over the tokens, survival logits."""

    def __init__(self, dim: int, group_sizes: list[int], hidden: int = 64, n_bins: int = 4,
                 dropout: float = 0.25):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.tokens = nn.Parameter(torch.randn(len(group_sizes), hidden) * 0.1)
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.recon = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n))
                                   for n in group_sizes)
        self.att_a, self.att_b = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.att_c = nn.Linear(hidden, 1)
        self.fuse_q = nn.Linear(hidden, hidden)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_bins))

    def forward(self, x):
        """``x`` (N, F) one slide's tiles -> dict of logits (n_bins,), recon (list), attentions."""
        h = self.embed(x)  # N, H
        scale = self.hidden ** -0.5
        tok_att = torch.softmax(self.q(self.tokens) @ self.k(h).T * scale, dim=-1)  # G, N
        z = tok_att @ self.v(h)  # G, H: the genomic groups as seen in the slide
        recon = [m(z[g]) for g, m in enumerate(self.recon)]
        a = self.att_c(torch.tanh(self.att_a(h)) * torch.sigmoid(self.att_b(h)))[:, 0]
        tile_att = torch.softmax(a, dim=0)  # N
        wsi = tile_att @ h  # H
        tok_w = torch.softmax(self.fuse_q(wsi) @ z.T * scale, dim=-1)  # G: which groups matter
        fused = torch.cat([wsi, tok_w @ z])
        return {"logits": self.head(fused), "recon": recon, "tile_att": tile_att, "token_att": tok_att,
                "token_w": tok_w}
