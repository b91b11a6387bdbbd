"""Colour management: convert slide pixels from an embedded ICC profile to sRGB."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


def icc_transform(profile: Any) -> Callable[[np.ndarray], np.ndarray] | None:
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


def image_to_srgb(img, icc_bytes: bytes):
    """A PIL image converted from its ``icc_bytes`` profile to sRGB, or ``None`` if the profile is unusable."""
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc_bytes))
        return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # an unusable profile is ignored rather than blocking the slide
        return None
