"""Open any whole-slide image as a lazy, multi-level RGB pyramid.

Backends (one module each), tried in this order:

* :mod:`.openslide_backend` – every vendor format OpenSlide detects;
* :mod:`.tifffile_backend` – generic tiled TIFF pyramids (what OpenSlide calls ``generic-tiff``: read
  through tifffile/zarr, which decodes a region with about a third of OpenSlide's CPU time; OpenSlide
  is the fallback), OME-TIFF, SubIFD pyramids and other tiled TIFFs OpenSlide does not take;
* :mod:`.image_backend` – plain JPEG/PNG/(untiled) TIFF, decoded once.

All levels are ``(rows, cols, 3)`` ``uint8`` in sRGB (an embedded ICC profile is applied, see
:mod:`.color`), and ``mpp`` (µm per level-0 pixel) gives the world scale, so every layer lives in
micrometres. The napari layer arguments of a slide are built in :mod:`napari_histoexpr.layerdata`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ...errors import SlideOpenError
from .image_backend import open_plain
from .openslide_backend import open_openslide
from .pyramid import (
    BACKGROUND_RGB,
    MIN_LEVEL_SIDE,
    SlidePyramid,
    downsample2,
    pyramid_from_array,
)
from .tifffile_backend import open_tifffile

__all__ = ["BACKGROUND_RGB", "MIN_LEVEL_SIDE", "SLIDE_SUFFIXES", "SlidePyramid", "downsample2", "is_slide_path",
           "open_slide", "pyramid_from_array"]

#: File suffixes the slide reader claims (lower case).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm", ".ome.tif", ".ome.tiff", ".jpg", ".jpeg", ".png", ".bmp",
)
PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


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
    if backend in (None, "openslide") and not lower.endswith(PLAIN_SUFFIXES) and ".ome." not in lower:
        import openslide

        fmt = openslide.OpenSlide.detect_format(path)
        if fmt == "generic-tiff" and backend is None:
            try:
                pyr = open_tifffile(path, apply_icc)
                if pyr is not None:
                    _validate(pyr)  # closes it when a tile does not decode: OpenSlide gets its turn
            except SlideOpenError:
                pyr = None
        if pyr is None and (fmt is not None or backend == "openslide"):
            try:
                pyr = open_openslide(path, apply_icc)
            except SlideOpenError as e:
                errors.append(str(e))
    if pyr is None and backend in (None, "tifffile") and lower.endswith((".tif", ".tiff", ".svs",
                                                                          ".ome.tif", ".ome.tiff",
                                                                          ".ndpi", ".scn", ".bif")):
        try:
            pyr = open_tifffile(path, apply_icc)
        except SlideOpenError as e:
            errors.append(str(e))
    if pyr is None and not errors and backend in (None, "image"):
        pyr = open_plain(path, apply_icc)
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
