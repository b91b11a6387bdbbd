"""Plain image backend: JPEG/PNG/BMP/untiled TIFF decoded once, then served as an in-memory pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import SlideOpenError
from .color import image_to_srgb
from .pyramid import SlidePyramid, pyramid_from_array


def open_plain(path: str, apply_icc: bool) -> SlidePyramid:
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
        converted = image_to_srgb(rgb, icc_bytes)
        if converted is not None:
            rgb, icc_applied = converted, True
    arr = np.asarray(rgb)
    mpp = None
    if dpi and dpi[0] and dpi[0] > 1000:  # only trust resolutions of a microscope, not 72/96 dpi
        mpp = 25400.0 / float(dpi[0])
    return pyramid_from_array(arr, path=path, mpp=mpp, backend="image", icc_applied=icc_applied)
