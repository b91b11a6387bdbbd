"""Every spot layout and slide container on generated real files, and the named errors on bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_histoexpr.cli import main as cli
from napari_histoexpr.data.gene_values import gene_values
from napari_histoexpr.datasets import make_demo
from napari_histoexpr.errors import (
    BarcodeJoinError,
    MissingScalefactorsError,
    SlideOpenError,
    SpotDataError,
    SpotsOutsideImageError,
)
from napari_histoexpr.io.manifest import Section, read_manifest, write_manifest
from napari_histoexpr.io.sections import load_section, open_steps
from napari_histoexpr.io.slides import open_slide, pyramid_from_array
from napari_histoexpr.io.spots import read_spots
from napari_histoexpr.layerdata import slide_layer_data
from napari_histoexpr.steps import drain


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout, lib in [("sr1", True), ("sr2", True), ("parquet", True), ("mtx", True), ("sr2", False)]:
        name = f"{layout}{'' if lib else '-nolib'}"
        out[name] = make_demo(base / name, size=1024, seed=3, layout=layout, library_ids=lib)
    return out


@pytest.mark.parametrize("name", ["sr1", "sr2", "parquet", "mtx", "sr2-nolib"])
def test_space_ranger_layouts_read_the_same(layouts, name):
    demo = layouts[name]
    ad = read_spots(demo.spots)
    truth = pd.read_csv(demo.truth / "spots.csv", index_col=0)
    truth = truth[truth.in_tissue == 1]
    assert ad.n_obs == len(truth) and ad.n_vars == len(demo.genes)
    t = truth.loc[ad.obs_names]
    # obsm["spatial"] is (x, y) in level-0 px of the slide
    assert np.allclose(ad.obsm["spatial"], t[["x", "y"]].to_numpy(), atol=0.51)
    assert ad.uns["histoexpr"]["spot_diameter_px"] == pytest.approx(55.0 / 0.5)
    ref = read_spots(layouts["sr2"].spots)
    assert np.array_equal(np.asarray(ad[ref.obs_names].X.todense() if hasattr(ad.X, "todense") else ad.X),
                          np.asarray(ref.X.todense() if hasattr(ref.X, "todense") else ref.X))


def test_h5ad_round_trip(layouts, tmp_path):
    ad = read_spots(layouts["sr2"].spots)
    p = tmp_path / "section.h5ad"
    ad.uns.pop("spatial", None)
    ad.write_h5ad(p)
    back = read_spots(p)
    assert np.allclose(back.obsm["spatial"], ad.obsm["spatial"])
    assert np.allclose(gene_values(back, "ERBB2"), gene_values(ad, "ERBB2"))


def test_missing_scalefactors(layouts, tmp_path):
    d = tmp_path / "outs"
    shutil.copytree(layouts["sr2"].spots, d)
    (d / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(MissingScalefactorsError, match="scalefactors"):
        read_spots(d)
    (d / "spatial" / "scalefactors_json.json").write_text("{not json")
    with pytest.raises(MissingScalefactorsError):
        read_spots(d)


def test_barcodes_that_do_not_join(layouts, tmp_path):
    d = tmp_path / "outs"
    shutil.copytree(layouts["sr2"].spots, d)
    pos = pd.read_csv(d / "spatial" / "tissue_positions.csv")
    pos["barcode"] = ["X" + b for b in pos["barcode"]]
    pos.to_csv(d / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(BarcodeJoinError, match="none of the .* spot ids"):
        read_spots(d)


def test_spots_outside_image(layouts, tmp_path):
    d = tmp_path / "outs"
    shutil.copytree(layouts["sr2"].spots, d)
    pos = pd.read_csv(d / "spatial" / "tissue_positions.csv")
    pos["pxl_col_in_fullres"] += 5000  # spots aligned to some other, bigger image
    pos.to_csv(d / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(SpotsOutsideImageError, match="outside"):
        drain(open_steps(layouts["sr2"].slide, d))


def test_not_a_spot_file(tmp_path):
    p = tmp_path / "x.h5ad"
    p.write_bytes(b"garbage")
    with pytest.raises(SpotDataError):
        read_spots(p)


def test_ome_tiff_subifd_pyramid(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    p = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(p) as tif:
        tif.write(base, subifds=2, tile=(256, 256), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        lvl = base
        for _ in range(2):
            lvl = lvl[::2, ::2]
            tif.write(lvl, tile=(256, 256), photometric="rgb", subfiletype=1)
    s = open_slide(p)
    assert s.backend.startswith("tifffile") and s.n_levels == 3 and s.mpp == pytest.approx(0.25)
    assert s.levels[0].chunksize[:2] == (256, 256)
    assert np.array_equal(s.read_region(100, 200, 50, 60), base[100:150, 200:260])


def test_generic_tiff_read_by_tifffile_same_pixels_as_openslide(tmp_path):
    """A generic tiled TIFF (no vendor) opens with tifffile (a region decodes with about a third of
    OpenSlide's CPU time) and gives OpenSlide's pixels, inside and across the slide's edges."""
    from napari_histoexpr.datasets import write_pyramidal_tiff

    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (1200, 1000, 3), dtype=np.uint8)

    def render(y, x, h, w, ds):
        return base[::int(ds), ::int(ds)][y:y + h, x:x + w]

    p = write_pyramidal_tiff(tmp_path / "g.tif", render, 1200, 1000, mpp=0.5, tile=256, min_side=256)
    fast, ref = open_slide(p), open_slide(p, backend="openslide")
    assert fast.backend.startswith("tifffile") and ref.backend == "openslide:generic-tiff"
    assert fast.mpp == ref.mpp == pytest.approx(0.5) and fast.downsamples == ref.downsamples
    for y, x, h, w, lvl in [(100, 130, 300, 250, 0), (-40, 900, 200, 300, 0), (1100, -20, 300, 90, 0),
                            (10, 20, 120, 100, 1)]:
        a, b = fast.read_region(y, x, h, w, level=lvl), ref.read_region(y, x, h, w, level=lvl)
        assert a.shape == (h, w, 3) and np.array_equal(a, b)
    a = fast.read_region(0, 0, 50, 50)
    a[:] = 0  # what read_region returns is the caller's: writing to it never changes the slide
    assert np.array_equal(fast.read_region(0, 0, 50, 50), ref.read_region(0, 0, 50, 50))


def test_read_region_returns_a_copy_of_in_memory_levels():
    img = np.full((600, 700, 3), 120, np.uint8)
    s = pyramid_from_array(img, mpp=1.0)
    a = s.read_region(10, 10, 100, 100)
    a[:] = 0
    assert img.min() == 120 and s.read_region(10, 10, 100, 100).min() == 120


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_plain_images_served_as_pyramid(tmp_path, ext):
    from PIL import Image

    img = np.zeros((1500, 2100, 3), np.uint8)
    img[:, :1000] = (200, 100, 150)
    p = tmp_path / f"he.{ext}"
    Image.fromarray(img).save(p)
    s = open_slide(p, mpp=0.5)
    assert s.backend == "image" and s.n_levels >= 3 and s.mpp == 0.5
    top = np.asarray(s.levels[-1])
    assert top.shape[2] == 3 and abs(int(top[0, 0, 0]) - 200) < 8 and top[0, -1].max() < 8
    lyr, kw, kind = slide_layer_data(s)
    assert kind == "image" and kw["rgb"] and kw["scale"] == pytest.approx((0.5, 0.5))


def test_pyramid_levels_are_consistent():
    from napari_histoexpr.io.slides import MIN_LEVEL_SIDE

    side = MIN_LEVEL_SIDE * 8
    img = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    p = pyramid_from_array(img, mpp=1.0)
    assert [lv.shape[0] for lv in p.levels] == [side, side // 2, side // 4, side // 8]
    assert p.downsamples == [1.0, 2.0, 4.0, 8.0]
    # each level is the 2x2 mean of the one below (within rounding)
    lo = np.asarray(p.levels[1][:4, :4]).astype(int)
    ref = img[:8, :8].reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    assert np.abs(lo - ref).max() <= 1


def test_icc_profile_applied(tmp_path):
    from PIL import Image, ImageCms

    prof = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = tmp_path / "with_icc.jpg"
    Image.fromarray(np.full((600, 800, 3), 180, np.uint8)).save(p, icc_profile=prof)
    assert open_slide(p).icc_applied
    assert not open_slide(p, apply_icc=False).icc_applied


def test_unsupported_file_is_named_error(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("this is not a slide")
    with pytest.raises(SlideOpenError):
        open_slide(p)
    with pytest.raises(SlideOpenError):
        open_slide(tmp_path / "missing.svs")


def test_manifest_round_trip_and_reader(layouts, tmp_path):
    secs = [Section(section=n, patient="P1", image=str(layouts[n].slide), spots=str(layouts[n].spots))
            for n in ("sr1", "parquet")]
    path = write_manifest(tmp_path / "sections.csv", secs)
    back = read_manifest(path)
    assert [s.section for s in back] == ["sr1", "parquet"]
    pyr, ad = load_section(back[1])
    assert pyr.mpp == 0.5 and ad.n_obs > 10
    from napari_histoexpr._reader import get_reader

    reader = get_reader(str(path))
    layers = reader(str(path))
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "points", "image", "points"]
    # the second section is laid out to the right of the first
    assert layers[2][1]["translate"][1] > layers[0][1]["translate"][1] + 1024 * 0.5


def test_manifest_missing_file_is_named_error(tmp_path):
    from napari_histoexpr.errors import ManifestError

    (tmp_path / "m.csv").write_text("section,image,spots\nA,nothere.tif,nothere\n")
    with pytest.raises(ManifestError, match="nothere"):
        read_manifest(tmp_path / "m.csv")


def test_cli_info_and_exit_codes(layouts, capsys, shared_data_or_none):
    demo = layouts["sr2"]
    assert cli(["info", "--slide", str(demo.slide), "--spots", str(demo.spots), "--gene", "ERBB2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slide"]["width"] == 1024 and out["spots"]["gene"]["max"] > 0
    assert cli(["info", "--spots", str(demo.spots), "--gene", "ERBB3"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("histoexpr: error:") and "ERBB3" in err and "ERBB2" in err
    if shared_data_or_none is not None:
        assert cli(["info", "--slide", str(shared_data_or_none / "wsi" / "broken.svs")]) == 2
        assert "histoexpr: error:" in capsys.readouterr().err
