"""Open any whole-slide image as a lazy, multi-level RGB pyramid.

Backends, tried in this order:

* **openslide** – every format OpenSlide detects (Aperio SVS, Hamamatsu NDPI/VMS, MIRAX, Leica SCN,
  Ventana BIF, Philips TIFF, DICOM, generic tiled TIFF). Levels are dask arrays chunked on the
  native tile size; chunks are read with ``read_region`` on demand.
* **tifffile** – OME-TIFF, SubIFD pyramids and other tiled TIFFs OpenSlide does not take, read as
  zarr stores (chunks = native tiles).
* **image** – plain JPEG/PNG/(untiled) TIFF: decoded once, then served as an in-memory pyramid.

All levels are ``(rows, cols, 3)`` ``uint8`` in sRGB (an embedded ICC profile is applied), and
``mpp`` (µm per level-0 pixel) gives the world scale, so every layer lives in micrometres.
"""

from __future__ import annotations

import io
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SlideOpenError

#: File suffixes the slide reader claims (lower case).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm", ".ome.tif", ".ome.tiff", ".jpg", ".jpeg", ".png", ".bmp",
)
_PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Smallest pyramid level built for plain images (longest side, px).
_MIN_LEVEL_SIDE = 512
_PLAIN_CHUNK = 512
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
        arr = self.levels[level]
        ly, lx = int(round(y0 / ds)), int(round(x0 / ds))
        out = np.empty((height, width, 3), np.uint8)
        out[...] = BACKGROUND_RGB
        ry0, rx0 = max(ly, 0), max(lx, 0)
        ry1, rx1 = min(ly + height, arr.shape[0]), min(lx + width, arr.shape[1])
        if ry1 > ry0 and rx1 > rx0:
            block = np.asarray(arr[ry0:ry1, rx0:rx1])
            out[ry0 - ly:ry1 - ly, rx0 - lx:rx1 - lx] = block
        return out

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """A small RGB image of the whole slide and its downsample relative to level 0."""
        target = max(self.level0_shape) / max_side
        level = self.level_for_downsample(max(target, self.downsamples[0]))
        img = np.asarray(self.levels[level])
        ds = self.downsamples[level]
        step = max(1, int(math.ceil(max(img.shape[:2]) / max_side)))
        return img[::step, ::step], ds * step

    # -- napari --------------------------------------------------------------------------------
    def layer_data(self, name: str | None = None) -> tuple:
        """The slide as a napari LayerData tuple (multiscale RGB image in µm)."""
        s = self.world_mpp * self.downsamples[0]
        meta = {
            "histoexpr": {
                "kind": "slide",
                "path": self.path,
                "mpp": self.mpp,
                "mpp_source": self.mpp_source,
                "backend": self.backend,
                "downsamples": list(self.downsamples),
                "level0_shape": list(self.level0_shape),
            }
        }
        # napari puts pixel centres at translate + i*scale: a reduced first level's pixel i covers
        # level-0 pixels [i*ds, (i+1)*ds), centred at (i + 0.5) * ds - 0.5.
        t = (self.downsamples[0] - 1) / 2 * self.world_mpp
        kwargs = {
            "name": name or Path(self.path).stem,
            "rgb": True,
            "multiscale": len(self.levels) > 1,
            "scale": (s, s),
            "translate": (t, t),
            "units": "µm" if self.mpp else "pixel",
            "metadata": meta,
            "contrast_limits": (0, 255),
        }
        data = self.levels if len(self.levels) > 1 else self.levels[0]
        return (data, kwargs, "image")

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------------------------------
# colour management
# -------------------------------------------------------------------------------------------------
def _icc_transform(profile: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function converting RGB uint8 arrays from ``profile`` (bytes or ImageCms profile) to sRGB."""
    from PIL import Image, ImageCms

    try:
        if isinstance(profile, (bytes, bytearray)):
            profile = ImageCms.ImageCmsProfile(io.BytesIO(bytes(profile)))
        srgb = ImageCms.createProfile("sRGB")
        transform = ImageCms.buildTransform(profile, srgb, "RGB", "RGB")
    except Exception:  # an unusable profile is ignored rather than blocking the slide
        return None
    lock = threading.Lock()  # littlecms transforms are not guaranteed re-entrant

    def apply(block: np.ndarray) -> np.ndarray:
        if block.size == 0:
            return block
        img = Image.fromarray(np.ascontiguousarray(block), "RGB")
        with lock:
            out = ImageCms.applyTransform(img, transform)
        return np.asarray(out)

    return apply


# -------------------------------------------------------------------------------------------------
# openslide backend
# -------------------------------------------------------------------------------------------------
class _OpenSlideLevel:
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
        rgb = _flatten_rgba(rgba)
        if self._icc is not None:
            rgb = self._icc(rgb)
        return rgb[:, :, cs]


def _flatten_rgba(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA; composite it over white."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    if np.all(alpha == 255):
        return rgba[..., :3].copy()
    out = rgb + (255 - alpha)  # premultiplied: c + (1 - a) * white
    return np.clip(out, 0, 255).astype(np.uint8)


def _float_prop(props, *keys) -> float | None:
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


def _open_openslide(path: str, apply_icc: bool) -> SlidePyramid:
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
        icc = _icc_transform(profile) if profile is not None else None
    levels = []
    tile = None
    for lv in range(slide.level_count):
        tw = int(_float_prop(props, f"openslide.level[{lv}].tile-width") or 512)
        th = int(_float_prop(props, f"openslide.level[{lv}].tile-height") or 512)
        # very small native tiles make dask graphs huge; group them into >= 256 px chunks
        fw, fh = max(1, math.ceil(256 / tw)), max(1, math.ceil(256 / th))
        tw, th = tw * fw, th * fh
        if tile is None:
            tile = (th, tw)
        arr = _OpenSlideLevel(slide, lv, icc)
        levels.append(
            da.from_array(arr, chunks=(th, tw, 3), asarray=False, fancy=False, lock=False,
                          name=f"openslide-{os.path.abspath(path)}-{lv}-{id(slide)}")
        )
    mpp = _float_prop(props, "openslide.mpp-x", "openslide.mpp-y")
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
        level0_shape=(h0, w0), properties=props, icc_applied=icc is not None, _closer=slide.close,
    )


# -------------------------------------------------------------------------------------------------
# tifffile backend
# -------------------------------------------------------------------------------------------------
def _tiff_mpp(tif, page) -> float | None:
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


def _to_rgb_dask(arr, axes: str):
    """Reorder a tifffile level to (Y, X, 3) uint8."""
    import dask.array as da

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


def _open_tifffile(path: str, apply_icc: bool) -> SlidePyramid | None:
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
        levels, downsamples = [], []
        base = None
        for i, lvl in enumerate(series.levels):
            store = lvl.aszarr()
            z = zarr.open(store, mode="r")
            if not hasattr(z, "shape"):  # a group: take the first array
                z = z[sorted(z.array_keys())[0]]
            arr = _to_rgb_dask(da.from_zarr(z), lvl.axes)
            if base is None:
                base = arr.shape[:2]
            levels.append(arr)
            downsamples.append(base[1] / arr.shape[1])
        icc = None
        if apply_icc:
            prof = page.tags.get(34675)
            if prof is not None:
                icc = _icc_transform(prof.value)
                if icc is not None:
                    levels = [lv.map_blocks(icc, dtype=np.uint8) for lv in levels]
        mpp = _tiff_mpp(tif, page)
        mpp_source = "metadata" if mpp and 0.05 <= mpp <= 50 else "unknown"
        if mpp_source == "unknown":
            mpp = None
        chunks = levels[0].chunksize[:2]
        return SlidePyramid(
            path=str(path), levels=levels, downsamples=downsamples, mpp=mpp, mpp_source=mpp_source,
            backend=f"tifffile:{series.kind}", tile_size=tuple(int(c) for c in chunks),
            level0_shape=tuple(int(s) for s in base), properties={"tiff.series": series.kind},
            icc_applied=icc is not None, _closer=tif.close,
        )
    except SlideOpenError:
        tif.close()
        raise
    except Exception as e:
        tif.close()
        raise SlideOpenError(f"cannot open slide {Path(path).name!r} with tifffile ({e})") from e


# -------------------------------------------------------------------------------------------------
# plain image backend
# -------------------------------------------------------------------------------------------------
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
    while max(arrays[-1].shape[:2]) > _MIN_LEVEL_SIDE * 2 - 1:
        arrays.append(downsample2(arrays[-1]))
    levels = [da.from_array(a, chunks=(_PLAIN_CHUNK, _PLAIN_CHUNK, 3)) for a in arrays]
    downsamples = [base_downsample * img.shape[1] / a.shape[1] for a in arrays]
    h0 = int(round(img.shape[0] * base_downsample))
    w0 = int(round(img.shape[1] * base_downsample))
    return SlidePyramid(
        path=str(path), levels=levels, downsamples=downsamples, mpp=mpp,
        mpp_source=mpp_source or ("metadata" if mpp else "unknown"), backend=backend,
        tile_size=(_PLAIN_CHUNK, _PLAIN_CHUNK), level0_shape=(h0, w0),
        properties=dict(properties or {}), icc_applied=icc_applied,
    )


def _open_plain(path: str, apply_icc: bool) -> SlidePyramid:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # slides are big by design; memory is bounded by the file itself
    try:
        with Image.open(path) as im:
            im.load()
            icc_bytes = im.info.get("icc_profile")
            dpi = im.info.get("dpi")
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise SlideOpenError(f"cannot open image {Path(path).name!r}: {e}") from e
    icc_applied = False
    if apply_icc and icc_bytes:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc_bytes))
            rgb = ImageCms.profileToProfile(rgb, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            icc_applied = True
        except Exception:
            pass
    arr = np.asarray(rgb)
    mpp = None
    if dpi and dpi[0] and dpi[0] > 1000:  # only trust resolutions of a microscope, not 72/96 dpi
        mpp = 25400.0 / float(dpi[0])
    return pyramid_from_array(arr, path=path, mpp=mpp, backend="image", icc_applied=icc_applied)


# -------------------------------------------------------------------------------------------------
# entry point
# -------------------------------------------------------------------------------------------------
def is_slide_path(path: str | os.PathLike) -> bool:
    p = str(path).lower()
    return p.endswith(SLIDE_SUFFIXES)


def _validate(pyr: SlidePyramid) -> None:
    """Decode one tile of the smallest level so corrupt files fail now, not in the canvas."""
    lv = pyr.levels[-1]
    th, tw = (min(64, lv.shape[0]), min(64, lv.shape[1]))
    try:
        np.asarray(lv[:th, :tw])
    except Exception as e:
        pyr.close()
        raise SlideOpenError(f"cannot read slide {Path(pyr.path).name!r}: corrupt image data ({e})") from e


def open_slide(path: str | os.PathLike, mpp: float | None = None, apply_icc: bool = True,
               backend: str | None = None) -> SlidePyramid:
    """Open a slide as a :class:`SlidePyramid`.

    Parameters
    ----------
    path:
        Any OpenSlide format, OME/SubIFD/tiled TIFF, or a plain JPEG/PNG/TIFF image.
    mpp:
        µm per level-0 pixel, overriding what the file says (needed for plain images).
    apply_icc:
        Convert from the embedded ICC profile to sRGB when the file has one.
    backend:
        Force ``"openslide"``, ``"tifffile"`` or ``"image"``.

    Raises
    ------
    SlideOpenError
        Missing, unsupported, corrupt or undecodable file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideOpenError(f"slide not found: {path}")
    lower = path.lower()
    pyr = None
    errors = []
    if backend in (None, "openslide") and not lower.endswith(_PLAIN_SUFFIXES) and ".ome." not in lower:
        import openslide

        fmt = openslide.OpenSlide.detect_format(path)
        if fmt is not None or backend == "openslide":
            try:
                pyr = _open_openslide(path, apply_icc)
            except SlideOpenError as e:
                errors.append(str(e))
    if pyr is None and backend in (None, "tifffile") and lower.endswith((".tif", ".tiff", ".svs",
                                                                          ".ome.tif", ".ome.tiff",
                                                                          ".ndpi", ".scn", ".bif")):
        try:
            pyr = _open_tifffile(path, apply_icc)
        except SlideOpenError as e:
            errors.append(str(e))
    if pyr is None and not errors and backend in (None, "image"):
        pyr = _open_plain(path, apply_icc)
    if pyr is None:
        if errors:
            raise SlideOpenError(errors[0] if len(errors) == 1 else "; ".join(errors))
        raise SlideOpenError(f"unsupported slide format: {Path(path).name!r}")
    try:
        _validate(pyr)
    except SlideOpenError as e:
        if errors:
            raise SlideOpenError(f"{errors[0]}; {e}") from e
        raise
    if mpp is not None:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise SlideOpenError(f"invalid mpp override {mpp!r}: must be a positive number")
        pyr.mpp, pyr.mpp_source = float(mpp), "override"
    return pyr
