"""Opening a tissue section — a slide and its measured spots — consistent in scale. The one place that
does it: the CLI, the reader, the sample data, training, evaluation and the panels all come here.

The mpp (µm per level-0 pixel) comes from an explicit override, else the slide's metadata, else the
spot geometry (ST pitch / Visium spot size); :func:`harmonise_mpp` makes slide and spots agree, and
spots outside the image raise :class:`~napari_histoexpr.errors.SpotsOutsideImageError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator

from ..errors import NoTissueImageError, SpotDataWarning
from ..steps import drain
from .legacy_st import place_on_frame
from .manifest import Section
from .slides import SlidePyramid, open_slide
from .spatialdata_store import is_spatialdata_store
from .spots import check_spots_in_image, read_clusters, read_spots

#: number of progress messages :func:`open_steps` yields (for a determinate progress bar)
N_OPEN_STEPS = 4

PathLike = str | os.PathLike | None


def harmonise_mpp(slide, adata) -> float | None:
    """Make slide and spots agree on µm per level-0 pixel (slide metadata wins over estimates)."""
    info = adata.uns["histoexpr"]
    if slide.mpp_source in ("metadata", "override"):
        if info.get("mpp_source") != "given" or slide.mpp_source == "override":
            info["mpp"] = slide.mpp
            info["mpp_source"] = f"slide {slide.mpp_source}"
    elif info.get("mpp"):
        slide.mpp = float(info["mpp"])
        slide.mpp_source = f"spots: {info.get('mpp_source', 'given')}"
    return slide.mpp


def open_steps(slide: PathLike, spots: PathLike = None, counts: PathLike = None, clusters: PathLike = None,
               mpp: float | None = None, bin_um: float | None = None) -> Generator[str, None, tuple]:
    """Open a slide and/or spots, yielding a progress message per step (a GUI worker shows them).

    Returns ``(SlidePyramid | None, AnnData | None)`` with mpp harmonised and spots checked
    against the image bounds. Raises the named errors of :mod:`napari_histoexpr.errors`.
    With spots but no slide, a Visium or ST folder's (or a SpatialData store's) own image is used.
    """
    pyr: SlidePyramid | None = None
    adata = None
    yield "opening slide" if slide else "no slide given"
    if slide:
        pyr = open_slide(slide, mpp=mpp)
    yield "reading spots" if spots else "no spots given"
    if spots and is_spatialdata_store(spots):  # a SpatialData store: its own image, spots and table
        from .spatialdata_store import read_store

        store_pyr, adata = read_store(spots)
        pyr = pyr or store_pyr
    elif spots:
        adata = read_spots(spots, counts=counts or None, mpp=mpp, bin_um=bin_um)
        if adata.uns["histoexpr"].get("bin_note"):  # the CLI prints it; the panel notifies
            warnings.warn(adata.uns["histoexpr"]["bin_note"], SpotDataWarning, stacklevel=2)
    if adata is not None and clusters:
        read_clusters(adata, clusters)
    yield "aligning"
    if pyr is None and adata is not None and adata.uns["histoexpr"].get("image"):  # an ST folder's image
        pyr = open_slide(adata.uns["histoexpr"]["image"], mpp=mpp)
    if pyr is None and adata is not None and "spatial" in adata.uns:
        from .visium import visium_image

        try:
            pyr = visium_image(adata)
        except NoTissueImageError as e:  # the spots and counts are fine: open them without an image
            warnings.warn(str(e), SpotDataWarning, stacklevel=2)
            adata.uns["histoexpr"]["warning"] = str(e)
    if pyr is not None and adata is not None:
        place_on_frame(adata, pyr.level0_shape)  # legacy ST counts without a spot file
        harmonise_mpp(pyr, adata)
        check_spots_in_image(adata, pyr.level0_shape)
    yield "done"
    return pyr, adata


def open_section(slide: PathLike, spots: PathLike = None, counts: PathLike = None, clusters: PathLike = None,
                 mpp: float | None = None, bin_um: float | None = None) -> tuple:
    """:func:`open_steps` run to completion: ``(SlidePyramid | None, AnnData | None)``."""

    return drain(open_steps(slide, spots, counts, clusters, mpp, bin_um))


def load_section(section: Section) -> tuple:
    """A manifest :class:`~napari_histoexpr.io.manifest.Section` opened: ``(SlidePyramid, AnnData)``,
    the AnnData tagged with the section and patient names."""
    pyr, adata = open_section(section.image, section.spots, section.counts, section.clusters, section.mpp,
                              section.bin_um)
    adata.uns["histoexpr"]["section"] = section.section
    adata.uns["histoexpr"]["patient"] = section.patient
    return pyr, adata
