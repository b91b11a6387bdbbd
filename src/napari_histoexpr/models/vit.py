"""Vision transformers in plain torch, with the parameter names of timm's ``VisionTransformer`` (the
layout UNI, UNI2-h, Virchow2, H-optimus, Prov-GigaPath and DINO pathology encoders publish their
weights in), so their files load without timm, which does not import beside this project's CPU torch.

One class covers the variants these encoders use: class token, register tokens, position embeddings
over the patches only or over every token, LayerScale, a plain GELU MLP or a packed SwiGLU MLP, and
the embedding taken from the class token, the mean of the patch tokens, or both concatenated. The
output of a forward pass is the embedding ``(N, D)``; :meth:`ViT.tokens` gives every token after the
final norm. A model built from a :class:`ViTSpec` is checked against an independent implementation
(transformers' ViT and DINOv2) in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ViTSpec:
    """The architecture of a ViT: what its weights file cannot say alone is here (heads, activation)."""

    dim: int
    depth: int
    heads: int
    patch: int
    img: int  # the image size the position embeddings were trained at
    hidden: int  # the MLP's hidden width (for a packed SwiGLU: fc1's output, gate and value together)
    swiglu: bool = False  # packed SwiGLU MLP (SiLU gate first) instead of a GELU MLP
    registers: int = 0
    layerscale: bool = False
    pos_on_prefix: bool = True  # position embeddings cover the class/register tokens too (else patches only)
    class_token: bool = True
    pool: str = "cls"  # "cls", "mean" (patch tokens) or "cls+mean" (both, concatenated)
    qkv_bias: bool = True
    eps: float = 1e-6

    @property
    def prefix(self) -> int:
        return int(self.class_token) + self.registers

    @property
    def grid(self) -> int:
        return self.img // self.patch

    @property
    def embed_dim(self) -> int:
        return 2 * self.dim if self.pool == "cls+mean" else self.dim


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if swiglu else hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.fc2(h)


class _Block(nn.Module):
    def __init__(self, s: ViTSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(s.dim, eps=s.eps)
        self.attn = _Attention(s.dim, s.heads, s.qkv_bias)
        self.ls1 = _LayerScale(s.dim) if s.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(s.dim, eps=s.eps)
        self.mlp = _Mlp(s.dim, s.hidden, s.swiglu)
        self.ls2 = _LayerScale(s.dim) if s.layerscale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, s: ViTSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, s.dim, s.patch, s.patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """A timm-layout vision transformer (``patch_embed.proj``, ``cls_token``, ``reg_token``,
    ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
    ``norm``). Input: normalised ``(N, 3, H, W)`` with H and W multiples of the patch size; position
    embeddings are resized (bicubic) for another grid."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        s = self.spec = spec
        self.patch_embed = _PatchEmbed(s)
        if s.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        if s.registers:
            self.reg_token = nn.Parameter(torch.zeros(1, s.registers, s.dim))
        n_pos = s.grid * s.grid + (s.prefix if s.pos_on_prefix else 0)
        self.pos_embed = nn.Parameter(torch.randn(1, n_pos, s.dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(s) for _ in range(s.depth))
        self.norm = nn.LayerNorm(s.dim, eps=s.eps)
        self.num_features = s.embed_dim

    def _patch_pos(self, gh: int, gw: int) -> torch.Tensor:
        s = self.spec
        pos = self.pos_embed[:, s.prefix:] if s.pos_on_prefix else self.pos_embed
        if (gh, gw) == (s.grid, s.grid):
            return pos
        grid = pos.reshape(1, s.grid, s.grid, s.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, s.dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm: ``(N, prefix + patches, dim)`` (class, registers, patches)."""
        s = self.spec
        n, _, h, w = x.shape
        if h % s.patch or w % s.patch:
            raise ValueError(f"input of {h} x {w} px is not a whole number of {s.patch} px patches")
        t = self.patch_embed(x)
        prefix = []
        if s.class_token:
            prefix.append(self.cls_token.expand(n, -1, -1))
        if s.registers:
            prefix.append(self.reg_token.expand(n, -1, -1))
        pos = self._patch_pos(h // s.patch, w // s.patch)
        if s.pos_on_prefix:
            t = torch.cat(prefix + [t], 1)
            t = t + torch.cat([self.pos_embed[:, :s.prefix], pos], 1)
        else:
            t = torch.cat(prefix + [t + pos], 1)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embedding of :meth:`tokens`' output, as the spec's ``pool`` says."""
        cls, mean = tokens[:, 0], tokens[:, self.spec.prefix:].mean(1)
        if self.spec.pool == "cls+mean":
            return torch.cat([cls, mean], 1)
        return mean if self.spec.pool == "mean" else cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.tokens(x))

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens as a feature map ``(N, dim, H / patch, W / patch)``."""
        s = self.spec
        t = self.tokens(x)[:, s.prefix:]
        return t.transpose(1, 2).reshape(x.shape[0], s.dim, x.shape[2] // s.patch, x.shape[3] // s.patch)


def spec_from_state(state: dict, heads: int | None = None, swiglu: bool | None = None) -> ViTSpec:
    """What a timm-layout state dict says of its ViT: width, depth, patch, tokens, position grid,
    LayerScale, MLP width (and SwiGLU where fc2 takes half of fc1's output). ``heads`` default to the
    width / 64 (80 for width 1280, ViT-H)."""
    dim = int(state["patch_embed.proj.weight"].shape[0])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    fc1, fc2 = state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc2.weight"]
    glu = int(fc2.shape[1]) * 2 == int(fc1.shape[0])
    if swiglu is None:
        swiglu = glu
    cls = "cls_token" in state
    regs = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    n_pos = int(state["pos_embed"].shape[1])
    prefix = int(cls) + regs
    grid = math.isqrt(n_pos)
    on_prefix = grid * grid != n_pos
    if on_prefix:
        grid = math.isqrt(n_pos - prefix)
    return ViTSpec(dim=dim, depth=depth, heads=heads or (16 if dim == 1280 else max(1, dim // 64)), patch=patch,
                   img=grid * patch, hidden=int(fc1.shape[0]), swiglu=swiglu, registers=regs,
                   layerscale="blocks.0.ls1.gamma" in state, pos_on_prefix=on_prefix, class_token=cls,
                   qkv_bias="blocks.0.attn.qkv.bias" in state)


class _PoolAttention(nn.Module):
    """Multi-head attention of learned queries over tokens of another width, with the parameter names
    ``torch.nn.MultiheadAttention`` gives it when ``kdim``/``vdim`` differ from the embedding
    (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``, ``in_proj_bias``, ``out_proj``)."""

    def __init__(self, dim: int, kdim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.zeros(dim, dim))
        self.k_proj_weight = nn.Parameter(torch.zeros(dim, kdim))
        self.v_proj_weight = nn.Parameter(torch.zeros(dim, kdim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        bq, bk, bv = self.in_proj_bias.chunk(3)
        n, h = q.shape[0], self.heads

        def split(t):
            return t.reshape(n, t.shape[1], h, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(F.linear(q, self.q_proj_weight, bq)),
                                           split(F.linear(kv, self.k_proj_weight, bk)),
                                           split(F.linear(kv, self.v_proj_weight, bv)))
        return self.out_proj(y.transpose(1, 2).reshape(n, q.shape[1], -1))


class AttentionalPooler(nn.Module):
    """open_clip's attentional pooler (CoCa): ``n_queries`` learned queries (``query``, layer-normed by
    ``ln_q``) attend over the layer-normed (``ln_k``) tokens."""

    def __init__(self, dim: int, context_dim: int, heads: int, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_queries, dim))
        self.attn = _PoolAttention(dim, context_dim, heads)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(q, self.ln_k(tokens))


class CoCaVisual(nn.Module):
    """The image tower of a CoCa model in open_clip's layout (CONCH): a timm ViT ``trunk`` whose every
    token (after the final norm) is pooled by ``attn_pool_contrast`` (one query) and ``ln_contrast``:
    the embedding CONCH gives with ``encode_image(proj_contrast=False, normalize=False)``, the one
    its authors recommend for linear probes. The caption pooler and the projections are not used."""

    def __init__(self, spec: ViTSpec, embed_dim: int = 512, pool_heads: int = 8):
        super().__init__()
        self.spec = spec
        self.trunk = ViT(spec)
        self.attn_pool_contrast = AttentionalPooler(embed_dim, spec.dim, pool_heads, 1)
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.num_features = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.tokens(x))[:, 0])

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's patch tokens as a feature map ``(N, dim, H / patch, W / patch)``."""
        return self.trunk.patch_tokens(x)
