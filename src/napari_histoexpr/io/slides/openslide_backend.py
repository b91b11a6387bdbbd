"""OpenSlide backend: every format OpenSlide detects (Aperio SVS, Hamamatsu NDPI/VMS, MIRAX, Leica SCN,
Ventana BIF, Philips TIFF, DICOM, generic tiled TIFF). Levels are dask arrays chunked on the native
tile size; chunks are read with ``read_region`` on demand."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...errors import SlideOpenError
from .color import icc_transform
from .pyramid import SlidePyramid


class OpenSlideLevel:
    """Array-like view of one OpenSlide level; ``__getitem__`` reads just the requested box."""

    def __init__(self, slide, level: int, icc: Callable | None):
        self._slide = slide
        self._level = level
        self._ds = slide.level_downsamples[level]
        w, h = slide.level_dimensions[level]
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._icc = icc

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        h, w = max(y1 - y0, 0), max(x1 - x0, 0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)[:, :, cs]
        # read_region takes level-0 coordinates for the top-left corner
        loc = (int(round(x0 * self._ds)), int(round(y0 * self._ds)))
        rgba = np.asarray(self._slide.read_region(loc, self._level, (w, h)))
        rgb = flatten_rgba(rgba)
        if self._icc is not None:
            rgb = self._icc(rgb)
        return rgb[:, :, cs]


def flatten_rgba(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA; composite it over white."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    if np.all(alpha == 255):
        return rgba[..., :3].copy()
    out = rgb + (255 - alpha)  # premultiplied: c + (1 - a) * white
    return np.clip(out, 0, 255).astype(np.uint8)


def float_prop(props, *keys) -> float | None:
    for k in keys:
        v = props.get(k)
        if v is None:
            continue
        try:
            f = float(v)
        except ValueError:
            continue
        if f > 0 and math.isfinite(f):
            return f
    return None


def open_openslide(path: str, apply_icc: bool) -> SlidePyramid:
    import dask.array as da
    import openslide

    try:
        slide = openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise SlideOpenError(f"cannot open slide {Path(path).name!r}: unsupported format ({e})") from e
    except openslide.OpenSlideError as e:
        raise SlideOpenError(f"cannot open slide {Path(path).name!r}: corrupt or undecodable ({e})") from e
    props = dict(slide.properties)
    icc = None
    if apply_icc:
        try:
            profile = slide.color_profile
        except Exception:
            profile = None
        icc = icc_transform(profile) if profile is not None else None
    levels, sources = [], []
    tile = None
    for lv in range(slide.level_count):
        tw = int(float_prop(props, f"openslide.level[{lv}].tile-width") or 512)
        th = int(float_prop(props, f"openslide.level[{lv}].tile-height") or 512)
        # very small native tiles make dask graphs huge; group them into >= 256 px chunks
        fw, fh = max(1, math.ceil(256 / tw)), max(1, math.ceil(256 / th))
        tw, th = tw * fw, th * fh
        if tile is None:
            tile = (th, tw)
        arr = OpenSlideLevel(slide, lv, icc)
        sources.append(arr)
        levels.append(
            da.from_array(arr, chunks=(th, tw, 3), asarray=False, fancy=False, lock=False,
                          name=f"openslide-{os.path.abspath(path)}-{lv}-{id(slide)}")
        )
    mpp = float_prop(props, "openslide.mpp-x", "openslide.mpp-y")
    w0, h0 = slide.level_dimensions[0]
    vendor = props.get("openslide.vendor", "openslide")
    # generic TIFF resolution tags are often placeholders (72 dpi = 352.8 µm/px): reject absurd mpp
    mpp_source = "metadata"
    if mpp is not None and not (0.05 <= mpp <= 50):
        mpp, mpp_source = None, "unknown"
    if mpp is None:
        mpp_source = "unknown"
    return SlidePyramid(
        path=str(path), levels=levels, downsamples=[float(d) for d in slide.level_downsamples],
        mpp=mpp, mpp_source=mpp_source, backend=f"openslide:{vendor}", tile_size=tile,
        level0_shape=(h0, w0), properties=props, icc_applied=icc is not None, sources=sources,
        _closer=slide.close,
    )
