"""Dense (fully-convolutional) prediction on a regular grid of cells: the backbone runs once over a
region read at the model's resolution, its feature map is averaged over each cell's window (the
window the model was trained on), and the head is applied to all cells in one batch.

Geometry. A model trained on ``window_um`` squares resized to ``px`` pixels sees the slide at
``px / window_um`` input px per µm; its feature map has one cell per :data:`STRIDE` (32) input px,
so a window is ``W = px / 32`` feature cells. The grid step is a whole number ``k`` of feature cells
(:func:`dense_step_um`), so pooling is exact: cell ``(a, b)``'s window is feature cells
``[a k, a k + W) x [b k, b k + W)`` of a region whose origin is the first cell's window corner. The
same windows in patch mode are the patches themselves; the only difference is what the network sees
beyond a window's border (real neighbouring tissue here, zero padding in patch mode) — their
agreement is measured (tests, docs/benchmarks.md).

Borders and memory. Every region is read with a context margin of ``margin_px`` input px on each
side (:func:`margin_for`), and the body runs on blocks of at most
``block_feats`` x ``block_feats`` feature cells (the branch's :attr:`DenseBranch.block_feats`), each
with that same margin around it, so adjacent tiles and blocks see the same context rule (no seams
beyond what a finite margin leaves) and the peak memory is that of one block whatever the region's
size (resnet18 on CPU, a 3328 px region: 163 MB above its own image with float blocks of 25 cells,
99-117 MB with int8 blocks of 50 cells, the region's 20 MB feature map included). A block larger
than a float block that only part of the region needs is cut where that skips enough background
(:func:`cover_blocks`).

Two ways to run a grid: :func:`read_cells` + :func:`compute_cells` (one region per call: whole-slide
tiles, each paying its window overhang and margin) and :class:`DenseJob` (the live view: the
feature map of the whole grid kept, blocks planned by :func:`plan_blocks` and computed once each,
cells released as soon as their windows are complete).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.patches import resize_to
from ..errors import HistoExprError

#: input px per feature cell of every backbone (see :data:`napari_histoexpr.models.backbones.STRIDE`)
STRIDE = 32
#: context read around every region and block, in input px (a multiple of STRIDE). Two feature cells:
#: with one, a model fitted on two generated sections gave tiles of 4 cells that differed from one
#: big region by up to 65 % of the maps' spread (90th percentile 16 %); with two, 3 % (1 %)
MARGIN_PX = 64
#: largest block of feature cells a float body runs at once (~800 px blocks run fastest on a CPU with
#: bf16: resnet18 5.4 Mpx/s at 768-832 px vs 3.9 at 1536 px on 2 cores); an int8 body's blocks are
#: larger (:data:`napari_histoexpr.models.quantize.INT8_BLOCK_FEATS`)
BLOCK_FEATS = 25


@dataclass
class DenseBranch:
    """One network run densely. ``body`` maps a float ``(1, 3, H, W)`` batch in [0, 1] to its
    ``(1, C, H/32, W/32)`` feature map (normalising pixels itself); ``head`` maps pooled ``(N, C)``
    features to ``(N, K)`` outputs. ``px`` / ``window_um`` are the patch geometry it was trained on."""

    body: Callable
    head: Callable
    px: int
    window_um: float
    #: context the network saw around a window in training, input px (a sub-spot model's cells sat
    #: inside a larger patch): the margin read around regions is at least this
    context_px: int = 0
    #: ``(w, w)`` weights of the window's feature cells (e.g. a Gaussian); ``None``: their plain mean
    kernel: np.ndarray | None = None
    #: largest block of feature cells the body runs at once (each block pays a context margin: the
    #: larger, the less work, up to where the body's rate per pixel drops)
    block_feats: int = BLOCK_FEATS
    #: whether the body has a feature map at all (a vision transformer's embedding does not: patch mode)
    fully_convolutional: bool = True

    @property
    def feature_um(self) -> float:
        """µm of slide per feature cell."""
        return STRIDE * self.window_um / self.px

    @property
    def window_cells(self) -> int:
        return max(1, int(round(self.px / STRIDE)))

    @property
    def exact(self) -> bool:
        """Whether the body is fully convolutional and the window a whole number of feature cells (else
        dense pooling is not exact and callers use patch mode)."""
        return self.fully_convolutional and self.px % STRIDE == 0


def dense_step_um(branches: list[DenseBranch], requested_um: float) -> float:
    """The grid step nearest ``requested_um`` that is a whole number of feature cells of every branch
    (ties go to the finer step)."""
    sizes = [b.feature_um for b in branches]
    base = max(sizes)
    best = None
    for k in range(1, 257):
        step = k * base
        if all(abs(step / s - round(step / s)) < 1e-6 for s in sizes):
            if best is None or abs(step - requested_um) < abs(best - requested_um) - 1e-9:
                best = step
            if step > requested_um:
                break
    if best is None:
        raise HistoExprError(f"no common grid step for feature cells of {sizes} µm; use patch mode")
    return float(best)


def read_scaled(pyr, y0: float, x0: float, height: int, width: int, input_per_l0: float) -> np.ndarray:
    """``height x width`` uint8 RGB at ``input_per_l0`` input px per level-0 px, top-left at level-0
    ``(y0, x0)``, read from the finest pyramid level not coarser than needed (white outside)."""

    level = pyr.level_for_downsample(1.0 / input_per_l0)
    ds = pyr.downsamples[level]
    scale = input_per_l0 * ds  # input px per level px (<= 1 unless the slide is coarser than the model)
    hl, wl = max(1, int(round(height / scale))), max(1, int(round(width / scale)))
    region = pyr.read_region(y0, x0, hl, wl, level=level)
    return resize_to(region, height, width)


def feature_blocks(body, img: np.ndarray, device, margin_px: int = MARGIN_PX,
                   block_feats: int = BLOCK_FEATS, needed: np.ndarray | None = None) -> "np.ndarray":
    """The body's feature map of ``img`` (uint8, ``(Hf*32 + 2m, Wf*32 + 2m, 3)``) without its margin:
    ``(C, Hf, Wf)`` float32 tensor, computed block by block (each block with its own margin). Only
    feature cells where ``needed`` (``(Hf, Wf)`` bool) is true are guaranteed (:func:`cover_blocks`;
    the others may be left 0)."""
    import torch

    from ..models.runtime import inference_amp, to_tensor

    m = margin_px // STRIDE
    hf = (img.shape[0] - 2 * margin_px) // STRIDE
    wf = (img.shape[1] - 2 * margin_px) // STRIDE
    amp = inference_amp(device)
    out = None
    with torch.inference_mode():
        for fy, fy1, fx, fx1 in cover_blocks(_even_blocks(0, hf, 0, wf, block_feats), needed, m):
            by, bx = fy1 - fy, fx1 - fx
            crop = img[fy * STRIDE: (fy + by) * STRIDE + 2 * margin_px,
                       fx * STRIDE: (fx + bx) * STRIDE + 2 * margin_px]
            x = to_tensor(crop[None], device, channels_last=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                f = body(x)[0]
            f = f[:, m:m + by, m:m + bx].float()
            if out is None:
                out = torch.zeros((f.shape[0], hf, wf), dtype=torch.float32, device=f.device)
            out[:, fy:fy + by, fx:fx + bx] = f
    return out


def _even_blocks(y0: int, y1: int, x0: int, x1: int, size: int) -> list[tuple[int, int, int, int]]:
    """``[y0, y1) x [x0, x1)`` in even blocks of at most ``size`` a side (100 cells in blocks of 25 is
    4 x 25, not 4 x 24 + 4), row-major."""
    return [(a, b, c, d) for a, b in _segments(y0, y1, size) for c, d in _segments(x0, x1, size)]


def cover_blocks(blocks: list[tuple[int, int, int, int]], needed: np.ndarray | None, margin: int = MARGIN_PX // STRIDE,
                 fine: int = BLOCK_FEATS) -> list[tuple[int, int, int, int]]:
    """``blocks`` (``(y0, y1, x0, x1)`` of feature cells, in order) as they are computed when only the
    ``needed`` feature cells count: a block with none is left out, and a block larger than ``fine``
    with some is run as its halves (recursively, down to ``fine``) where that is less work, each block
    costing its area with a ``margin`` of feature cells around it: large blocks pay fewer margins,
    small ones skip more background."""
    if needed is None:
        return list(blocks)

    def cost(bs):
        return sum((b[1] - b[0] + 2 * margin) * (b[3] - b[2] + 2 * margin) for b in bs)

    def cover(b):
        if not needed[b[0]:b[1], b[2]:b[3]].any():
            return []
        h, w = b[1] - b[0], b[3] - b[2]
        if max(h, w) <= fine:
            return [b]
        sy, sx = (math.ceil(n / 2) if n > fine else n for n in (h, w))
        parts = [p for a, c in _segments(b[0], b[1], sy) for e, f in _segments(b[2], b[3], sx)
                 for p in cover((a, c, e, f))]
        return parts if cost(parts) < cost([b]) else [b]

    return [p for b in blocks for p in cover(b)]


def margin_for(branch: DenseBranch, margin_px: int = MARGIN_PX) -> int:
    """The context margin of a branch: ``margin_px`` (or the context it was trained with, if more)
    rounded down to whole feature cells (at least one), whatever the window: a margin cut to half of
    a small window left visible seams."""
    return max(STRIDE, max(margin_px, branch.context_px) // STRIDE * STRIDE)


def grid_geometry(pyr, br: DenseBranch, step_l0: float, margin_px: int = MARGIN_PX) -> tuple[float, int, int, int]:
    """``(q, k, w, m)`` of a branch on a grid ``step_l0`` level-0 px apart: input px per level-0 px,
    grid step and window in feature cells, context margin in input px."""
    q = br.px / br.window_um * pyr.world_mpp  # input px per level-0 px
    k_float = step_l0 * q / STRIDE
    k = int(round(k_float))
    if k < 1 or abs(k_float - k) > 1e-3:
        raise HistoExprError(f"grid step {step_l0:.2f} px is not a whole number of feature cells "
                             f"({STRIDE / q:.2f} px); use dense_step_um")
    return q, k, br.window_cells, margin_for(br, margin_px)


def needed_features(cells: np.ndarray, k: int, w: int) -> np.ndarray:
    """``(hf, wf)`` bool: the feature cells inside the window of a wanted cell (``cells``, (rows, cols)
    bool; cell ``(a, b)``'s window is feature cells ``[a k, a k + w) x [b k, b k + w)``)."""
    rows, cols = cells.shape
    need = np.zeros(((rows - 1) * k + w, (cols - 1) * k + w), bool)
    for a, b in zip(*np.nonzero(cells)):
        need[a * k:a * k + w, b * k:b * k + w] = True
    return need


def pool_windows(br: DenseBranch, feats, k: int, w: int):
    """``(C, rows, cols)``: ``feats`` (C, hf, wf) pooled over each cell's window (the branch's kernel
    or a plain mean)."""
    import torch
    import torch.nn.functional as F

    if br.kernel is None:
        return F.avg_pool2d(feats[None], kernel_size=w, stride=k)[0]
    kern = torch.as_tensor(br.kernel, dtype=feats.dtype, device=feats.device)  # the same for every channel
    return F.conv2d(feats[None], kern[None, None].expand(feats.shape[0], 1, w, w), stride=k,
                    groups=feats.shape[0])[0]


@dataclass
class CellRegion:
    """The input image of one branch for a block of grid cells (read, not yet computed)."""

    branch: DenseBranch  # as it runs on this slide (e.g. an int8 body, in its own blocks)
    img: np.ndarray  # uint8 (Hf*32 + 2m, Wf*32 + 2m, 3)
    k: int  # grid step in feature cells
    w: int  # window in feature cells
    margin_px: int
    rows: int
    cols: int
    cells: np.ndarray | None = None  # (rows, cols) bool: the cells wanted (others may be skipped)

    def needed_features(self) -> np.ndarray | None:
        """Feature cells inside the window of a wanted cell."""
        return None if self.cells is None else needed_features(self.cells, self.k, self.w)


def read_cells(pyr, branches: list[DenseBranch], x0: float, y0: float, rows: int, cols: int, step_l0: float,
               transform=None, margin_px: int = MARGIN_PX, cells: np.ndarray | None = None) -> list[CellRegion]:
    """Read (I/O only) what :func:`compute_cells` needs for the ``rows x cols`` cells of a regular
    grid whose first cell is centred at level-0 ``(x0, y0)``, ``step_l0`` level-0 px apart; with
    ``cells`` ((rows, cols) bool), blocks no wanted cell needs are not computed."""
    out = []
    for br in branches:
        q, k, w, m = grid_geometry(pyr, br, step_l0, margin_px)
        hf, wf = (rows - 1) * k + w, (cols - 1) * k + w
        half = br.px / 2 / q  # level-0 px from a cell centre to its window edge
        img = read_scaled(pyr, y0 - half - m / q, x0 - half - m / q, hf * STRIDE + 2 * m, wf * STRIDE + 2 * m, q)
        if transform is not None:
            img = transform(img)
        out.append(CellRegion(br, img, k, w, m, rows, cols, None if cells is None else np.asarray(cells, bool)))
    return out


def compute_cells(regions: list[CellRegion], device) -> np.ndarray:
    """``(rows, cols, K)`` outputs (mean over branches) from what :func:`read_cells` read."""
    import torch

    outs = []
    for reg in regions:
        br = reg.branch
        feats = feature_blocks(br.body, reg.img, device, reg.margin_px, br.block_feats, reg.needed_features())
        pooled = pool_windows(br, feats, reg.k, reg.w)  # (C, rows, cols)
        flat = pooled.permute(1, 2, 0).reshape(reg.rows * reg.cols, -1)
        with torch.inference_mode():
            outs.append(br.head(flat).float().cpu().numpy().reshape(reg.rows, reg.cols, -1))
    return np.mean(outs, axis=0) if len(outs) > 1 else outs[0]


def dense_cells(pyr, branches: list[DenseBranch], x0: float, y0: float, rows: int, cols: int, step_l0: float,
                device, transform=None, margin_px: int = MARGIN_PX, cells: np.ndarray | None = None) -> np.ndarray:
    """``(rows, cols, K)`` outputs for the cells of a regular grid (read, then compute); only the
    ``cells`` wanted are guaranteed (others may come from skipped, all-zero blocks)."""
    regions = read_cells(pyr, branches, x0, y0, rows, cols, step_l0, transform, margin_px, cells)
    return compute_cells(regions, device)


def _segments(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into even segments of at most ``size``."""
    if hi <= lo:
        return []
    n = math.ceil((hi - lo) / size)
    e = math.ceil((hi - lo) / n)
    return [(a, min(a + e, hi)) for a in range(lo, hi, e)]


def plan_blocks(hf: int, wf: int, first: tuple[int, int, int, int] | None = None, block_feats: int = BLOCK_FEATS,
                needed: np.ndarray | None = None, margin: int = MARGIN_PX // STRIDE) -> list[tuple[int, int, int, int]]:
    """Blocks ``(y0, y1, x0, x1)`` of feature cells covering an ``hf x wf`` map once, in the order to
    compute them. With ``first`` (a rectangle of feature cells, e.g. the windows of the cells at the
    view centre) that rectangle is the first block, the rest of its rows are cut to its left and right,
    and the rows above and below into blocks of at most ``block_feats`` a side, nearest to it first;
    without, an even grid of such blocks. Where ``needed`` ((hf, wf) bool) is given, blocks are as
    :func:`cover_blocks` runs them (none without a needed cell; ``margin``: the blocks' context margin
    in feature cells)."""
    if first is None:
        blocks = _even_blocks(0, hf, 0, wf, block_feats)
    else:
        y0, y1 = max(0, first[0]), min(hf, first[1])
        x0, x1 = max(0, first[2]), min(wf, first[3])
        centre = _even_blocks(y0, y1, x0, x1, block_feats)
        side = _even_blocks(y0, y1, 0, x0, block_feats) + _even_blocks(y0, y1, x1, wf, block_feats)
        rest = _even_blocks(0, y0, 0, wf, block_feats) + _even_blocks(y1, hf, 0, wf, block_feats)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        blocks = centre + sorted(side + rest,
                                 key=lambda b: ((b[0] + b[1]) / 2 - cy) ** 2 + ((b[2] + b[3]) / 2 - cx) ** 2)
    return cover_blocks(blocks, needed, margin)


class DenseJob:
    """The dense prediction of a grid of cells computed block by block, each cell released as soon as
    the feature cells of its window are all computed (the live view's progressive refresh).

    Unlike :func:`read_cells` + :func:`compute_cells`, whose regions each pay the window overhang and
    context margin, the job keeps the feature map of its whole grid: every feature cell is computed
    once (each block with its own context margin), and a cell's window may span several blocks.
    :meth:`read` is the I/O half of one block (reader threads), :meth:`compute` the model half.
    Memory: the feature map (C x hf x wf float32) plus one block."""

    def __init__(self, pyr, branches: list[DenseBranch], x0: float, y0: float, rows: int, cols: int,
                 step_l0: float, device, cells: np.ndarray | None = None,
                 first: tuple[int, int, int, int] | None = None, transform=None, scale: Callable | None = None,
                 margin_px: int = MARGIN_PX,
                 block_feats: int | None = None):
        self.pyr, self.branches, self.device, self.transform = pyr, branches, device, transform
        self.scale = scale or (lambda y: y)
        self.rows, self.cols = rows, cols
        self.cells = np.ones((rows, cols), bool) if cells is None else np.asarray(cells, bool)
        self.done = np.zeros((rows, cols), bool)
        self.geometry, self.feats, self.computed, self.items = [], [], [], []
        for i, br in enumerate(branches):
            q, k, w, m = grid_geometry(pyr, br, step_l0, margin_px)
            half = br.px / 2 / q
            hf, wf = (rows - 1) * k + w, (cols - 1) * k + w
            self.geometry.append((q, k, w, m, y0 - half, x0 - half))  # level-0 corner of feature cell (0, 0)
            self.feats.append(None)
            self.computed.append(np.zeros((hf, wf), bool))
            span = None if first is None else (first[0] * k, (first[1] - 1) * k + w,  # the first cells' windows
                                               first[2] * k, (first[3] - 1) * k + w)
            self.items += [(i, b) for b in plan_blocks(hf, wf, span, block_feats or br.block_feats,
                                                       needed_features(self.cells, k, w), m // STRIDE)]

    def read(self, item) -> np.ndarray:
        """The input image of one block, with its context margin (I/O only)."""
        i, (fy0, fy1, fx0, fx1) = item
        q, _, _, m, oy, ox = self.geometry[i]
        img = read_scaled(self.pyr, oy + (fy0 * STRIDE - m) / q, ox + (fx0 * STRIDE - m) / q,
                          (fy1 - fy0) * STRIDE + 2 * m, (fx1 - fx0) * STRIDE + 2 * m, q)
        return img if self.transform is None else self.transform(img)

    def compute(self, item, img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run one block read by :meth:`read`; returns the cells it completed (``(rows, cols)`` bool,
        wanted cells only) and their outputs ``(n, K)`` in row-major order (``None`` if none)."""
        import torch

        with torch.inference_mode():
            return self._compute(item, img)

    def _compute(self, item, img):
        import torch

        i, (fy0, fy1, fx0, fx1) = item
        br, m = self.branches[i], self.geometry[i][3]
        f = feature_blocks(br.body, img, self.device, m, block_feats=max(fy1 - fy0, fx1 - fx0))
        if self.feats[i] is None:
            self.feats[i] = torch.zeros((f.shape[0], *self.computed[i].shape), dtype=torch.float32, device=f.device)
        self.feats[i][:, fy0:fy1, fx0:fx1] = f
        self.computed[i][fy0:fy1, fx0:fx1] = True
        ready = self.cells & ~self.done
        for (_, kk, ww, _, _, _), comp in zip(self.geometry, self.computed):
            ready &= _windows_complete(comp, kk, ww, self.rows, self.cols)
        if not ready.any():
            return ready, None
        self.done |= ready
        a0, a1 = np.nonzero(ready.any(1))[0][[0, -1]]
        b0, b1 = np.nonzero(ready.any(0))[0][[0, -1]]
        sub = ready[a0:a1 + 1, b0:b1 + 1]
        outs = []
        for br, (_, kk, ww, _, _, _), feats in zip(self.branches, self.geometry, self.feats):
            pooled = pool_windows(br, feats[:, a0 * kk:a1 * kk + ww, b0 * kk:b1 * kk + ww], kk, ww)
            flat = pooled[:, torch.from_numpy(sub).to(pooled.device)].T  # (n, C), row-major
            outs.append(br.head(flat).float().cpu().numpy())
        return ready, self.scale(np.mean(outs, axis=0) if len(outs) > 1 else outs[0])


def _windows_complete(computed: np.ndarray, k: int, w: int, rows: int, cols: int) -> np.ndarray:
    """``(rows, cols)`` bool: cells whose whole window of feature cells is computed."""
    c = np.zeros((computed.shape[0] + 1, computed.shape[1] + 1), np.int32)
    c[1:, 1:] = computed.cumsum(0).cumsum(1)
    a, b = np.arange(rows)[:, None] * k, np.arange(cols)[None, :] * k
    return (c[a + w, b + w] - c[a, b + w] - c[a + w, b] + c[a, b]) == w * w


def box_means(feats, y0: np.ndarray, x0: np.ndarray, size: float) -> "np.ndarray":
    """Means of ``feats`` (C, H, W; feature cell ``(i, j)`` covers ``[i, i+1) x [j, j+1)``) over the
    boxes ``[y0, y0 + size) x [x0, x0 + size)`` in fractional feature coordinates (partly covered
    cells count by their covered area): ``(N, C)``."""
    import torch

    c, h, w = feats.shape
    s = torch.zeros((c, h + 1, w + 1), dtype=torch.float64, device=feats.device)
    s[:, 1:, 1:] = feats.double().cumsum(1).cumsum(2)

    def integral(yy, xx):  # S at fractional points, bilinear between the exact integer values
        yy, xx = np.clip(yy, 0, h), np.clip(xx, 0, w)
        iy, ix = np.minimum(np.floor(yy).astype(int), h - 1), np.minimum(np.floor(xx).astype(int), w - 1)
        fy = torch.as_tensor(yy - iy, device=feats.device)[None]
        fx = torch.as_tensor(xx - ix, device=feats.device)[None]
        iy, ix = torch.as_tensor(iy, device=feats.device), torch.as_tensor(ix, device=feats.device)
        a, b = s[:, iy, ix], s[:, iy + 1, ix]
        cc, d = s[:, iy, ix + 1], s[:, iy + 1, ix + 1]
        return a * (1 - fy) * (1 - fx) + b * fy * (1 - fx) + cc * (1 - fy) * fx + d * fy * fx

    y1, x1 = y0 + size, x0 + size
    tot = integral(y1, x1) - integral(y0, x1) - integral(y1, x0) + integral(y0, x0)
    return (tot / (size * size)).T.float()


def dense_at_centres(pyr, branches: list[DenseBranch], centres: np.ndarray, device, transform=None,
                     margin_px: int = MARGIN_PX, chunk_feats: int = 96
                     ) -> np.ndarray:
    """``(N, K)`` outputs at arbitrary level-0 ``(x, y)`` centres (e.g. measured spots): the feature
    map of the region around them, pooled over each centre's window (fractional box pooling). The
    centres are handled in spatial chunks of about ``chunk_feats`` feature cells a side, so memory is
    bounded whatever the section's size."""
    import torch

    centres = np.asarray(centres, float).reshape(-1, 2)
    outs = []
    for br in branches:
        q = br.px / br.window_um * pyr.world_mpp
        m = margin_for(br, margin_px)
        win_in = float(br.px)  # the window in input px
        res = np.zeros((len(centres), 0), np.float32)
        cin = centres * q  # centres in input px of the whole slide
        span = chunk_feats * STRIDE
        keys = np.floor(cin / span).astype(int)
        order = np.lexsort((keys[:, 0], keys[:, 1]))
        start = 0
        while start < len(order):
            end = start
            while end < len(order) and (keys[order[end]] == keys[order[start]]).all():
                end += 1
            idx = order[start:end]
            lo = np.floor((cin[idx] - win_in / 2).min(0) / STRIDE) * STRIDE  # (x, y), whole feature cells
            hi = np.ceil((cin[idx] + win_in / 2).max(0) / STRIDE) * STRIDE
            wf, hf = int((hi[0] - lo[0]) // STRIDE), int((hi[1] - lo[1]) // STRIDE)
            img = read_scaled(pyr, (lo[1] - m) / q, (lo[0] - m) / q, hf * STRIDE + 2 * m, wf * STRIDE + 2 * m, q)
            if transform is not None:
                img = transform(img)
            feats = feature_blocks(br.body, img, device, m, br.block_feats)
            fy0 = (cin[idx, 1] - win_in / 2 - lo[1]) / STRIDE
            fx0 = (cin[idx, 0] - win_in / 2 - lo[0]) / STRIDE
            pooled = box_means(feats, fy0, fx0, win_in / STRIDE)
            with torch.inference_mode():
                y = br.head(pooled).float().cpu().numpy()
            if res.shape[1] == 0:
                res = np.zeros((len(centres), y.shape[1]), np.float32)
            res[idx] = y
            start = end
        outs.append(res)
    return np.mean(outs, axis=0) if len(outs) > 1 else outs[0]
