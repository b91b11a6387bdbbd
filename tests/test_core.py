import numpy as np
import pandas as pd
import pytest

from napari_histoexpr.data.gene_values import find_gene, gene_values
from napari_histoexpr.errors import SlideOpenError, UnknownGeneError
from napari_histoexpr.io.slides import open_slide
from napari_histoexpr.io.spots import check_spots_in_image, read_clusters, read_spots
from napari_histoexpr.io.visium import visium_image


@pytest.mark.parametrize("name", ["unopenable.tiff", "unreadable.svs", "broken.svs"])
def test_broken_slides_raise_named_error(shared_data, name):
    with pytest.raises(SlideOpenError):
        open_slide(shared_data / "wsi" / name)


def test_aperio_svs(shared_data):
    s = open_slide(shared_data / "wsi" / "cmu-1-small-region.svs")
    assert s.level0_shape == (2967, 2220) and s.mpp == pytest.approx(0.499)
    px = s.read_region(1000, 1000, 64, 64)
    assert px.shape == (64, 64, 3) and px.std() > 5  # real tissue, not blank


def test_generic_tiff_pyramid(shared_data):
    s = open_slide(shared_data / "wsi" / "boxes.tiff")
    assert s.n_levels == 4 and s.mpp is None  # 72 dpi placeholder rejected


def test_demo_slide_backends_agree(demo):
    a = open_slide(demo.slide)
    b = open_slide(demo.slide, backend="tifffile")
    assert a.mpp == b.mpp == 0.5
    assert a.downsamples == b.downsamples
    assert np.array_equal(np.asarray(a.levels[1][:200, :200]), np.asarray(b.levels[1][:200, :200]))


def test_demo_spots_follow_planted_classes(demo):
    ad = read_spots(demo.spots)
    truth = pd.read_csv(demo.truth / "spots.csv", index_col=0).loc[ad.obs_names]
    erbb2 = gene_values(ad, "ERBB2", "normalised")
    col = gene_values(ad, "COL1A1", "normalised")
    assert np.corrcoef(erbb2, truth["frac_tumour"])[0, 1] > 0.8
    assert np.corrcoef(col, truth["frac_stroma"])[0, 1] > 0.8
    assert check_spots_in_image(ad, open_slide(demo.slide).level0_shape) == 0
    with pytest.raises(UnknownGeneError):
        find_gene(ad, "NOTAGENE")


def test_her2st_legacy_st(shared_data):
    d = shared_data / "her2st"
    ad = read_spots(d / "spots" / "C2_selection.tsv")
    assert 150 < ad.n_obs < 200
    assert ad.uns["histoexpr"]["mpp"] == pytest.approx(0.69, abs=0.03)
    read_clusters(ad, d / "clusters" / "C2-cluster-annotation.tsv.gz")
    assert ad.obs["cluster"].notna().mean() > 0.9


def test_visium_sr1(shared_data):
    ad = read_spots(shared_data / "visium" / "scanpy-1.0.0")
    assert ad.shape == (100, 100)
    img = visium_image(ad)
    assert img.backend == "visium:lowres"
