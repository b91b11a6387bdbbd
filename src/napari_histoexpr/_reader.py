"""npe2 reader: slides, Space Ranger folders, .h5ad, legacy ST spot and counts files, ST pipeline
folders (counts + image; a folder of several ST sections side by side), SpatialData stores and section
manifests.

Every reader returns LayerData tuples in the µm world, so slide, spots and predictions overlay.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.gene_values import top_genes
from .io.legacy_st import looks_like_st_counts, st_counts_in, st_folder_sections
from .io.manifest import Section, read_manifest
from .io.qupath import looks_like_geojson
from .io.sections import load_section, open_section
from .io.slides import is_slide_path, open_slide
from .io.spatialdata_store import is_spatialdata_store
from .io.spots import read_spots
from .io.visium import is_visium_folder, looks_like_space_ranger
from .layerdata import prediction_layers, slide_layer_data, spots_layer_data

_GAP_UM = 500.0  # space between sections of a manifest laid out side by side


def _is_manifest(path: str) -> bool:
    if not path.lower().endswith(".csv"):
        return False
    try:
        with open(path) as f:
            head = f.readline().lower()
    except OSError:
        return False
    cols = {c.strip() for c in head.split(",")}
    return {"section", "image", "spots"} <= cols


def get_reader(path):
    """Return a reader function for ``path``, or ``None`` if this plugin does not read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    if os.path.isdir(path):
        from .io.prediction_store import is_prediction

        if is_prediction(path):
            return read_prediction_layers
        if is_spatialdata_store(path):  # SpatialData: image, spots and their table
            return read_section_folder_layers
        n_st = len(st_counts_in(path))
        if n_st > 1:  # several ST sections (STUtility): side by side, as a manifest
            return read_st_sections_layers
        if n_st:  # ST pipeline / STUtility: counts + image (reading names what is amiss)
            return read_section_folder_layers
        # a Space Ranger folder, complete or not: reading an incomplete one names the missing file
        return read_section_folder_layers if is_visium_folder(path) or looks_like_space_ranger(path) else None
    low = path.lower()
    if looks_like_geojson(path):
        return read_geojson_layers
    if low.endswith(".h5ad") or low.endswith("_selection.tsv") or looks_like_st_counts(path):
        return read_spot_layers
    if _is_manifest(path):
        return read_manifest_layers
    if low.endswith(".csv"):
        return None
    if is_slide_path(path):
        return read_slide_layers
    return None


def _one(path):
    return os.fspath(path[0] if isinstance(path, list) else path)


def read_slide_layers(path):
    pyr = open_slide(_one(path))
    return [slide_layer_data(pyr)]


def _spot_layers(adata, mpp=None, gene=None, translate=None):
    gene = gene or top_genes(adata, 1)[0]
    data, kwargs, kind = spots_layer_data(adata, gene, "log1p", mpp=mpp)
    if translate is not None:
        data = data + translate
    return (data, kwargs, kind)


def read_section_folder_layers(path):
    """A Space Ranger or ST pipeline folder, or a SpatialData store: its image (when usable) and spots."""
    pyr, adata = open_section(None, _one(path))  # warns (a napari notification) when there is no image
    if pyr is None:
        return [_spot_layers(adata)]
    return [slide_layer_data(pyr, name=Path(_one(path)).name), _spot_layers(adata, pyr.mpp)]


def read_spot_layers(path):
    adata = read_spots(_one(path))
    return [_spot_layers(adata)]


def read_manifest_layers(path):
    """Every section of a manifest, side by side (left to right) in one world."""
    return _side_by_side(read_manifest(_one(path)))


def read_st_sections_layers(path):
    """A folder of several legacy ST sections (counts + image each), side by side as a manifest."""
    return _side_by_side(st_folder_sections(_one(path)))


def _side_by_side(sections: list[Section]) -> list:
    out = []
    offset_um = 0.0
    for sec in sections:
        pyr, adata = load_section(sec)
        data, kwargs, kind = slide_layer_data(pyr, name=sec.section)
        t = kwargs.get("translate", (0.0, 0.0))
        kwargs["translate"] = (t[0], t[1] + offset_um)
        out.append((data, kwargs, kind))
        sd, skw, sk = _spot_layers(adata, pyr.mpp, translate=(0.0, offset_um))
        skw["name"] = f"{sec.section} {skw['name']}"
        out.append((sd, skw, sk))
        offset_um += pyr.level0_shape[1] * pyr.world_mpp + _GAP_UM
    return out


def read_prediction_layers(path):
    """A ``histoexpr predict`` output: one aligned heatmap layer per gene (first three genes)."""

    return prediction_layers(_one(path))


def read_geojson_layers(path):
    """A QuPath GeoJSON export (or a drawn-regions sidecar) next to its slide.

    Annotations become drawn regions: added to the viewer's ground-truth layer when one is open (it is
    autosaved), otherwise merged into the slide's sidecar (saved now) and shown as the ground-truth
    layer. Detections (spots, bins, grid cells, cells) become a Points layer with their measurements as
    features. The slide is not opened as a layer; it gives the µm scale (as the viewer shows it when
    it is open there: a JPEG's scale may come from its spots)."""
    from .errors import GeoJSONError
    from .io.qupath import DETECTION_TYPES, describe_skipped, new_objects, read_geojson, slide_next_to
    from .layerdata import TRUTH_KEY, add_regions, detections_layer_data, regions_layer_data
    from .segment.annotations import as_regions, load_regions, save_regions, sidecar_path

    p = Path(_one(path))
    objs, skipped = read_geojson(p)
    slide = slide_next_to(p)
    if slide is None:
        raise GeoJSONError(f"no slide next to {p.name}: name it after its slide (slide.svs -> slide.geojson), "
                           "or open the slide and use the QuPath panel's Import")
    viewer = _current_viewer()
    mpp = _open_slide_mpp(viewer, slide) or open_slide(str(slide)).world_mpp
    regions = as_regions(objs)
    dets = [o for o in objs if o.object_type in DETECTION_TYPES]
    out = []
    if regions:
        layer = None if viewer is None else next(
            (ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("key") == TRUTH_KEY), None)
        if layer is not None:  # the open ground truth takes them (and autosaves)
            add_regions(layer, regions)
        else:
            side = sidecar_path(slide)
            have = load_regions(side) if side.exists() and side != p else []
            merged = have + new_objects(regions, (o.id for o in have))
            if side != p:
                save_regions(side, merged)
            out.append(regions_layer_data(merged, mpp, side))
    if dets:
        out.append(detections_layer_data(dets, mpp, f"{p.name}: detections", p))
    if not out and not regions:
        what = describe_skipped(skipped) or "nothing"
        raise GeoJSONError(f"{p.name} holds no regions or detections ({what})")
    return out or [(None,)]


def _open_slide_mpp(viewer, slide: Path) -> float | None:
    """µm per level-0 pixel of ``slide`` as the viewer shows it, if it is open there (its scale may come
    from the spots, e.g. a JPEG placed by the ST spot pitch, which the file alone does not know)."""
    for ly in [] if viewer is None else viewer.layers:
        info = ly.metadata.get("histoexpr", {})
        if info.get("kind") == "slide" and info.get("path") and Path(info["path"]).resolve() == slide.resolve():
            return float(ly.scale[-1]) / float((info.get("downsamples") or [1.0])[0])
    return None


def _current_viewer():
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # no Qt / no viewer: a plain read
        return None
