"""tifffile backend: OME-TIFF, SubIFD pyramids and other tiled TIFFs OpenSlide does not take, read as
zarr stores (chunks = native tiles)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...errors import SlideOpenError
from .color import icc_transform
from .pyramid import SlidePyramid


def tiff_mpp(tif, page) -> float | None:
    if tif.is_ome and tif.ome_metadata:
        import re

        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m:
            v = float(m.group(1))
            u = unit.group(1) if unit else "µm"
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(u, 1.0)
            return v * factor
    desc = page.description or ""
    if desc.startswith("Aperio"):
        for part in desc.split("|"):
            k, _, v = part.partition("=")
            if k.strip() == "MPP":
                try:
                    return float(v)
                except ValueError:
                    pass
    try:
        xres = page.tags["XResolution"].value
        unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    except KeyError:
        return None
    px_per_unit = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
    if px_per_unit <= 0:
        return None
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2:  # inch
        return 25400.0 / px_per_unit
    return None


def to_rgb(arr, axes: str, xp=None):
    """Reorder a tifffile level (a dask array, or with ``xp=numpy`` a block of it) to (Y, X, 3) uint8."""
    if xp is None:
        import dask.array as xp
    da = xp
    axes = axes.upper()
    # drop leading singleton axes (T, Z, ...)
    while arr.ndim > 2 and axes[0] not in "YXSC" and arr.shape[0] == 1:
        arr, axes = arr[0], axes[1:]
    if "S" in axes and arr.ndim == 3:
        arr = da.moveaxis(arr, axes.index("S"), -1)
    elif "C" in axes and arr.ndim == 3:
        arr = da.moveaxis(arr, axes.index("C"), -1)
    elif arr.ndim == 2:
        arr = da.stack([arr] * 3, axis=-1)
    if arr.ndim != 3:
        raise SlideOpenError(f"unsupported TIFF layout {axes!r} (expected Y, X and 3 samples)")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 1:
        arr = da.concatenate([arr] * 3, axis=-1)
    elif arr.shape[-1] != 3:
        raise SlideOpenError(f"unsupported number of channels {arr.shape[-1]} (expected RGB)")
    if arr.dtype != np.uint8:
        info = np.iinfo(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else None
        scale = 255.0 / info.max if info else 255.0
        arr = (arr.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
    return arr


class TiffLevel:
    """Array-like RGB view of one tifffile level: ``[ys, xs]`` decodes just the tiles of that box."""

    def __init__(self, z, axes: str, shape: tuple, icc: Callable | None):
        self._z, self._axes, self._icc = z, axes.upper(), icc
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.uint8), 3

    def __getitem__(self, key):
        ys, xs = key[:2]
        idx = tuple(ys if a == "Y" else xs if a == "X" else slice(None) for a in self._axes)
        rgb = to_rgb(np.asarray(self._z[idx]), self._axes, np)
        return self._icc(rgb) if self._icc is not None else rgb


def open_tifffile(path: str, apply_icc: bool) -> SlidePyramid | None:
    """Open a tiled TIFF through tifffile/zarr; ``None`` if it is an untiled single image."""
    import dask.array as da
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:
        raise SlideOpenError(f"cannot open slide {Path(path).name!r}: not a readable TIFF ({e})") from e
    try:
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        tiled = bool(getattr(page, "is_tiled", False))
        if len(series.levels) == 1 and not tiled:
            tif.close()
            return None
        levels, downsamples, stores = [], [], []
        base = None
        for i, lvl in enumerate(series.levels):
            store = lvl.aszarr()
            z = zarr.open(store, mode="r")
            if not hasattr(z, "shape"):  # a group: take the first array
                z = z[sorted(z.array_keys())[0]]
            arr = to_rgb(da.from_zarr(z), lvl.axes)
            stores.append((z, lvl.axes, arr.shape))
            if base is None:
                base = arr.shape[:2]
            levels.append(arr)
            downsamples.append(base[1] / arr.shape[1])
        icc = None
        if apply_icc:
            prof = page.tags.get(34675)
            if prof is not None:
                icc = icc_transform(prof.value)
                if icc is not None:
                    levels = [lv.map_blocks(icc, dtype=np.uint8) for lv in levels]
        sources = None
        if all("Y" in ax.upper() and "X" in ax.upper() for _, ax, _ in stores):
            sources = [TiffLevel(z, ax, shape, icc) for z, ax, shape in stores]
        mpp = tiff_mpp(tif, page)
        mpp_source = "metadata" if mpp and 0.05 <= mpp <= 50 else "unknown"
        if mpp_source == "unknown":
            mpp = None
        chunks = levels[0].chunksize[:2]
        return SlidePyramid(
            path=str(path), levels=levels, downsamples=downsamples, mpp=mpp, mpp_source=mpp_source,
            backend=f"tifffile:{series.kind}", tile_size=tuple(int(c) for c in chunks),
            level0_shape=tuple(int(s) for s in base), properties={"tiff.series": series.kind},
            icc_applied=icc is not None, sources=sources,
            _closer=tif.close,
        )
    except SlideOpenError:
        tif.close()
        raise
    except Exception as e:
        tif.close()
        raise SlideOpenError(f"cannot open slide {Path(path).name!r} with tifffile ({e})") from e
