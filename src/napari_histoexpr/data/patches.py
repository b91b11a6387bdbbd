"""Patches at spot centres from the lazy slide pyramid, tissue masks and stain augmentation.

Patches cover a physical window (``window_um``) resampled to ``px`` pixels. They are read from the
pyramid level nearest the needed resolution (never coarser), **block by block**: the level is cut
into blocks of native tiles, each block that holds patch centres is read once and every patch in it
is cut from memory, so a section with hundreds of spots costs a few dozen reads, not one
``read_region`` per patch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# -------------------------------------------------------------------------------------------------
# tissue mask
# -------------------------------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance; scikit-image's, over a
    ``bins``-bin histogram); a constant sample's threshold is its value."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, float).ravel()
    if v.size == 0 or v.min() == v.max():
        return float(v[0]) if v.size else 0.0
    return float(threshold_otsu(image=v, nbins=bins))


def tissue_mask_from_rgb(rgb: np.ndarray, smooth_px: int = 3) -> np.ndarray:
    """Tissue where the local saturation exceeds Otsu's threshold (glass is grey-white, H&E is
    coloured). Saturation is averaged over ``smooth_px`` so pale cytoplasm between nuclei counts as
    tissue; small holes are filled."""
    from scipy import ndimage as ndi

    x = rgb[..., :3].astype(np.float32)
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    dark = mx < 30  # black borders/pen are not tissue
    if smooth_px > 1:
        sat = ndi.uniform_filter(sat, size=smooth_px)
    t = otsu_threshold(sat[~dark]) if (~dark).any() else 1.0
    mask = (sat > max(t, 0.05)) & ~dark
    mask = ndi.binary_closing(mask, iterations=2)
    return ndi.binary_fill_holes(mask)


def tissue_mask(pyr, max_side: int = 2048, smooth_um: float = 16.0) -> tuple[np.ndarray, float]:
    """Tissue mask of a slide at a coarse level; returns ``(mask, downsample)`` (level-0 px per cell)."""
    level = pyr.n_levels - 1
    for i, lv in enumerate(pyr.levels):
        if max(lv.shape[:2]) <= max_side:
            level = i
            break
    img = np.asarray(pyr.levels[level])
    ds = pyr.level0_shape[1] / img.shape[1]
    mpp = pyr.world_mpp * ds if pyr.mpp else None
    smooth = int(round(smooth_um / mpp)) if mpp else 5
    return tissue_mask_from_rgb(img, max(1, smooth)), float(ds)


def tissue_fraction_map(mask: np.ndarray, mask_ds: float, radius_px: float) -> np.ndarray:
    """Per mask cell, the fraction of tissue in a square of half-side ``radius_px`` (level-0) around it."""
    from scipy.ndimage import uniform_filter

    k = max(1, int(round(2 * radius_px / mask_ds)))
    return uniform_filter(mask.astype(np.float32), size=k, mode="constant")


def sample_mask(values: np.ndarray, mask_ds: float, xy: np.ndarray) -> np.ndarray:
    """``values`` (on the mask grid, ``mask_ds`` level-0 px per cell) at level-0 ``(x, y)`` points."""
    r = np.clip(np.round(xy[:, 1] / mask_ds - 0.5).astype(int), 0, values.shape[0] - 1)
    c = np.clip(np.round(xy[:, 0] / mask_ds - 0.5).astype(int), 0, values.shape[1] - 1)
    return values[r, c]


def tissue_fraction_at(mask: np.ndarray, mask_ds: float, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Fraction of tissue in a square of half-side ``radius_px`` (level-0) around each ``(x, y)``."""
    return sample_mask(tissue_fraction_map(mask, mask_ds, radius_px), mask_ds, xy)


# -------------------------------------------------------------------------------------------------
# patch extraction
# -------------------------------------------------------------------------------------------------
def patch_level(pyr, window_um: float, px: int) -> int:
    """The coarsest level still at least as fine as ``window_um / px`` µm per pixel."""
    mpp = pyr.world_mpp
    target_ds = window_um / px / mpp
    best = 0
    for i, d in enumerate(pyr.downsamples):
        if d <= target_ds * 1.01:
            best = i
    return best


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``img`` resized to ``height x width``: bilinear when shrinking less than 2x (or enlarging),
    box filter beyond (area averaging, as a pyramid level would)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    from PIL import Image

    smooth = img.shape[0] < 2 * height
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR
                                                  if smooth else Image.Resampling.BOX))


def resize_patch(img: np.ndarray, px: int) -> np.ndarray:
    return resize_to(img, px, px)


def extract_patches(pyr, xy: np.ndarray, window_um: float, px: int, block_tiles: int = 4,
                    progress: Callable[[int, int], None] | None = None,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``(N, px, px, 3)`` uint8 patches centred on level-0 ``xy`` (x, y), a ``window_um`` square.

    Reads are grouped by blocks of ``block_tiles`` x ``block_tiles`` native tiles of the chosen
    level; areas outside the slide are white. ``transform`` (e.g. stain normalisation) is applied
    to each patch.
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = len(xy)
    out = np.empty((n, px, px, 3), np.uint8)
    if n == 0:
        return out
    level = patch_level(pyr, window_um, px)
    ds = pyr.downsamples[level]
    win = window_um / (pyr.world_mpp * ds)  # window side in level px (float)
    wpx = int(np.ceil(win))
    half = win / 2
    tile = max(pyr.tile_size) if pyr.tile_size else 512
    block = tile * block_tiles
    cx, cy = xy[:, 0] / ds, xy[:, 1] / ds  # centres in level px (pixel centres at +0.5)
    bi = np.floor(cy / block).astype(int)
    bj = np.floor(cx / block).astype(int)
    order = np.lexsort((bj, bi))
    done = 0
    start = 0
    while start < n:
        end = start
        key = (bi[order[start]], bj[order[start]])
        while end < n and (bi[order[end]], bj[order[end]]) == key:
            end += 1
        idx = order[start:end]
        x0 = int(np.floor((cx[idx] - half).min()))
        y0 = int(np.floor((cy[idx] - half).min()))
        x1 = int(np.ceil((cx[idx] + half).max())) + 1
        y1 = int(np.ceil((cy[idx] + half).max())) + 1
        region = pyr.read_region(y0 * ds, x0 * ds, y1 - y0, x1 - x0, level=level)  # level-0 origin
        for k in idx:
            py = int(np.floor(cy[k] - half)) - y0
            px0 = int(np.floor(cx[k] - half)) - x0
            patch = np.ascontiguousarray(region[py:py + wpx, px0:px0 + wpx])
            patch = resize_patch(patch, px)
            if transform is not None:
                patch = transform(patch)
            out[k] = patch
        done += len(idx)
        if progress is not None:
            progress(done, n)
        start = end
    return out


# -------------------------------------------------------------------------------------------------
# stain: HED augmentation (torch, on batches) and Macenko normalisation (numpy)
# -------------------------------------------------------------------------------------------------
#: Ruifrok & Johnston's H&E-DAB stain vectors (optical density per RGB channel), rows H, E, D
HED_FROM_RGB_OD = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def augment_batch(x, generator=None, hed_sigma: float = 0.05, brightness: float = 0.05,
                  flips: bool = True, paired=None):
    """Random flips, 90° rotations and HED colour jitter of a float batch ``(N, 3, H, W)`` in [0, 1].

    HED jitter (Tellez et al.): each image's haematoxylin, eosin and DAB concentrations are scaled
    by ``U(1-σ, 1+σ)`` and shifted by ``U(-σ, σ)`` in optical-density space. ``paired`` (``(N, h, w)``
    maps over the same images, e.g. footprint weights) gets the same flips and rotations; it is then
    returned too: ``(x, paired)``.
    """
    import torch

    n = x.shape[0]
    dev = x.device
    if flips:
        k = torch.randint(0, 4, (n,), generator=generator).tolist()
        f = torch.randint(0, 2, (n,), generator=generator).tolist()

        def turn(batch):
            return torch.stack([torch.rot90(b.flip(-1) if fi else b, ki, dims=(-2, -1))
                                for b, ki, fi in zip(batch, k, f)])

        x = turn(x)
        if paired is not None:
            paired = turn(paired)
    if hed_sigma > 0:
        m = torch.from_numpy(_unit_rows(HED_FROM_RGB_OD)).to(dev, x.dtype)  # (3 stains, 3 rgb)
        minv = torch.linalg.inv(m)
        od = -torch.log(x.clamp(1.0 / 255, 1.0))  # (N, 3, H, W)
        conc = torch.einsum("nchw,cs->nshw", od, minv)
        alpha = 1 + (torch.rand((n, 3, 1, 1), generator=generator) * 2 - 1).to(dev, x.dtype) * hed_sigma
        beta = (torch.rand((n, 3, 1, 1), generator=generator) * 2 - 1).to(dev, x.dtype) * hed_sigma
        conc = conc * alpha + beta
        od = torch.einsum("nshw,sc->nchw", conc, m)
        x = torch.exp(-od).clamp(0, 1)
    if brightness > 0:
        b = 1 + (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1).to(dev, x.dtype) * brightness
        x = (x * b).clamp(0, 1)
    return x if paired is None else (x, paired)


def _od(img: np.ndarray) -> np.ndarray:
    return -np.log((img.reshape(-1, 3).astype(np.float64) + 1) / 256)


def macenko_fit(img: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> dict:
    """Stain matrix (H, E rows, unit OD vectors) and 99th-percentile concentrations (Macenko 2009)."""
    od = _od(img)
    od = od[(od > beta).all(axis=1)]
    if len(od) < 100:
        raise ValueError("too little stained tissue to estimate stain vectors")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]].copy()  # (3, 2): the plane of the two strongest directions
    if plane[0, 0] < 0:
        plane[:, 0] *= -1
    if plane[0, 1] < 0:
        plane[:, 1] *= -1
    proj = od @ plane
    ang = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(ang, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])  # H has the larger red OD
    stains = _unit_rows(stains)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    return {"stains": stains.tolist(), "max_conc": np.percentile(conc, 99, axis=1).tolist()}


def macenko_normaliser(target: dict) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping an RGB patch to the stain appearance of ``target`` (from :func:`macenko_fit`)."""
    t_stains = np.asarray(target["stains"])
    t_max = np.asarray(target["max_conc"])

    def apply(img: np.ndarray) -> np.ndarray:
        try:
            src = macenko_fit(img)
        except (ValueError, np.linalg.LinAlgError):
            return img  # background patch: nothing to normalise
        od = _od(img)
        conc = np.linalg.lstsq(np.asarray(src["stains"]).T, od.T, rcond=None)[0]
        conc *= (t_max / np.maximum(np.asarray(src["max_conc"]), 1e-6))[:, None]
        rgb = 256 * np.exp(-(t_stains.T @ conc)) - 1
        return np.clip(rgb.T, 0, 255).reshape(img.shape).astype(np.uint8)

    return apply
