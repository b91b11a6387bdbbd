"""The slide as a lazy multi-level RGB pyramid with a physical pixel size (every backend returns one)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SlideOpenError

#: Smallest pyramid level built for in-memory images (longest side, px).
MIN_LEVEL_SIDE = 512
PLAIN_CHUNK = 512
BACKGROUND_RGB = (255, 255, 255)


@dataclass
class SlidePyramid:
    """A slide as a list of lazy RGB levels with a physical pixel size.

    ``levels[i]`` is a dask array of shape ``(rows, cols, 3)``; ``downsamples[i]`` is its size
    factor relative to level-0 pixels (the coordinate system of spots and predictions). The first
    entry may have a downsample > 1 when only a reduced image exists (e.g. a Visium lowres PNG).
    """

    path: str
    levels: list
    downsamples: list[float]
    mpp: float | None
    mpp_source: str
    backend: str
    tile_size: tuple[int, int]
    level0_shape: tuple[int, int]
    properties: dict[str, Any] = field(default_factory=dict)
    icc_applied: bool = False
    #: optional array-likes, one per level (same shapes as ``levels``), that read a 2-D box in one
    #: call; :meth:`read_region` uses them to skip dask's per-chunk graph for large reads
    sources: list | None = None
    _closer: Callable[[], None] | None = field(default=None, repr=False)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def world_mpp(self) -> float:
        """µm per level-0 pixel used for the world scale (1.0 if unknown)."""
        return float(self.mpp) if self.mpp else 1.0

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def level_for_downsample(self, downsample: float) -> int:
        """Index of the finest level that is not finer than ``downsample`` needs."""
        best = 0
        for i, ds in enumerate(self.downsamples):
            if ds <= downsample * 1.0001:
                best = i
        return best

    def level_for_mpp(self, target_mpp: float) -> int:
        """Level whose resolution is closest to (and not coarser than) ``target_mpp``."""
        return self.level_for_downsample(target_mpp / self.world_mpp)

    def read_region(self, y0: float, x0: float, height: int, width: int, level: int = 0) -> np.ndarray:
        """Read ``height x width`` pixels of ``level`` whose top-left is level-0 ``(y0, x0)``.

        Parts outside the slide are filled with white, so callers can read windows centred on
        spots at the edge of the image.
        """
        ds = self.downsamples[level]
        arr = self.sources[level] if self.sources else self.levels[level]
        ly, lx = int(round(y0 / ds)), int(round(x0 / ds))
        ry0, rx0 = max(ly, 0), max(lx, 0)
        ry1, rx1 = min(ly + height, arr.shape[0]), min(lx + width, arr.shape[1])
        if (ry0, rx0, ry1, rx1) == (ly, lx, ly + height, lx + width):  # inside the slide
            block = np.asarray(arr[ry0:ry1, rx0:rx1])
            # never hand out a view of an in-memory level (callers may write into what they get)
            return block.copy() if not block.flags.owndata or block is arr else block
        out = np.empty((height, width, 3), np.uint8)
        out[...] = BACKGROUND_RGB
        if ry1 > ry0 and rx1 > rx0:
            out[ry0 - ly:ry1 - ly, rx0 - lx:rx1 - lx] = np.asarray(arr[ry0:ry1, rx0:rx1])
        return out

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """A small RGB image of the whole slide and its downsample relative to level 0."""
        target = max(self.level0_shape) / max_side
        level = self.level_for_downsample(max(target, self.downsamples[0]))
        img = np.asarray(self.levels[level])
        ds = self.downsamples[level]
        step = max(1, int(math.ceil(max(img.shape[:2]) / max_side)))
        return img[::step, ::step], ds * step

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def downsample2(img: np.ndarray) -> np.ndarray:
    """Halve an RGB uint8 image by 2x2 block averaging (odd edges are kept by replication)."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    acc = img[0::2, 0::2].astype(np.uint16)
    acc += img[1::2, 0::2]
    acc += img[0::2, 1::2]
    acc += img[1::2, 1::2]
    return ((acc + 2) // 4).astype(np.uint8)


def pyramid_from_array(img: np.ndarray, path: str = "<array>", mpp: float | None = None,
                       mpp_source: str | None = None, backend: str = "array",
                       base_downsample: float = 1.0, properties: dict | None = None,
                       icc_applied: bool = False) -> SlidePyramid:
    """Serve an in-memory RGB image as a pyramid (each level half the previous one)."""
    import dask.array as da

    img = np.ascontiguousarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise SlideOpenError(f"expected an 8-bit RGB image, got {img.dtype}")
    arrays = [img]
    while max(arrays[-1].shape[:2]) > MIN_LEVEL_SIDE * 2 - 1:
        arrays.append(downsample2(arrays[-1]))
    levels = [da.from_array(a, chunks=(PLAIN_CHUNK, PLAIN_CHUNK, 3)) for a in arrays]
    downsamples = [base_downsample * img.shape[1] / a.shape[1] for a in arrays]
    h0 = int(round(img.shape[0] * base_downsample))
    w0 = int(round(img.shape[1] * base_downsample))
    return SlidePyramid(
        path=str(path), levels=levels, downsamples=downsamples, mpp=mpp,
        mpp_source=mpp_source or ("metadata" if mpp else "unknown"), backend=backend,
        tile_size=(PLAIN_CHUNK, PLAIN_CHUNK), level0_shape=(h0, w0),
        properties=dict(properties or {}), icc_applied=icc_applied, sources=arrays,
    )
