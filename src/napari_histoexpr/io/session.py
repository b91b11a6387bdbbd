"""Opening a slide and its spots as one step-wise job (the GUI runs it in a worker thread)."""

from __future__ import annotations

import os
from collections.abc import Generator

from .manifest import harmonise_mpp
from .slides import SlidePyramid, open_slide
from .spots import check_spots_in_image, read_clusters, read_spots

#: number of progress messages :func:`open_steps` yields (for a determinate progress bar)
N_OPEN_STEPS = 4


def open_steps(slide: str | os.PathLike | None, spots: str | os.PathLike | None = None,
               counts: str | os.PathLike | None = None, clusters: str | os.PathLike | None = None,
               mpp: float | None = None) -> Generator[str, None, tuple]:
    """Open a slide and/or spots, yielding a progress message per step.

    Returns ``(SlidePyramid | None, AnnData | None)`` with mpp harmonised and spots checked
    against the image bounds. Raises the named errors of :mod:`napari_histoexpr.errors`.
    With spots but no slide, a Visium folder's own tissue image is used.
    """
    pyr: SlidePyramid | None = None
    adata = None
    yield "opening slide" if slide else "no slide given"
    if slide:
        pyr = open_slide(slide, mpp=mpp)
    yield "reading spots" if spots else "no spots given"
    if spots:
        adata = read_spots(spots, counts=counts or None, mpp=mpp)
        if clusters:
            read_clusters(adata, clusters)
    yield "aligning"
    if pyr is None and adata is not None and "spatial" in adata.uns:
        from .spots import visium_image

        pyr = visium_image(adata)
    if pyr is not None and adata is not None:
        harmonise_mpp(pyr, adata)
        check_spots_in_image(adata, pyr.level0_shape)
    yield "done"
    return pyr, adata
