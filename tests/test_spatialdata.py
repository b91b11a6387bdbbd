"""SpatialData interop: a generated section with its predicted maps exported to a SpatialData store
(checked with the spatialdata package itself) and read back by the plugin's reader: same pixels,
same spot positions and counts."""

import importlib.util

import numpy as np
import pytest

# skipped only where the optional package is not installed at all; an installed but broken one fails
if importlib.util.find_spec("spatialdata") is None:
    pytest.skip("SpatialData interop needs the optional 'spatialdata' package (pip install "
                "'napari-histoexpr[spatialdata]'; the test command installs it)", allow_module_level=True)
import spatialdata as sd  # noqa: E402

from napari_histoexpr._reader import get_reader  # noqa: E402
from napari_histoexpr.cli import main as cli  # noqa: E402
from napari_histoexpr.datasets import make_demo  # noqa: E402
from napari_histoexpr.errors import SpotDataError  # noqa: E402
from napari_histoexpr.io.sections import open_section  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    base = tmp_path_factory.mktemp("sdata")
    demo = make_demo(base / "demo", size=1024, mpp=1.0, seed=31)
    assert cli(["predict", "--model", str(trained), "--slide", str(demo.slide), "--out", str(base / "pred"),
                "--device", "cpu"]) == 0
    out = base / "section.zarr"
    assert cli(["export", "--format", "spatialdata", "--slide", str(demo.slide), "--spots", str(demo.spots),
                "--prediction", str(base / "pred"), "--out", str(out)]) == 0
    return demo, out, base / "pred"


def test_store_is_valid_spatialdata(store):
    from spatialdata.transformations import get_transformation

    demo, out, pred = store
    sdata = sd.read_zarr(out)
    assert set(sdata.images) == {"slide", "predicted"} and set(sdata.shapes) == {"spots"}
    assert set(sdata.tables) == {"table"}
    pyr, adata = open_section(demo.slide, demo.spots)
    table = sdata.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "spots"
    np.testing.assert_array_equal(table.X.toarray(), adata.X.toarray())
    assert list(table.obs["spot_id"]) == list(adata.obs_names)
    # global coordinates are µm: the slide's pixel p (corner convention) at p * mpp, the spots with it
    m = get_transformation(sdata.images["slide"], "global").to_affine_matrix(("y", "x"), ("y", "x"))
    np.testing.assert_allclose(np.diag(m)[:2], [pyr.world_mpp] * 2)
    circles = sdata.shapes["spots"]
    assert np.allclose(circles["radius"], adata.uns["histoexpr"]["spot_diameter_px"] / 2)
    np.testing.assert_allclose(circles.geometry.x.to_numpy(), adata.obsm["spatial"][:, 0] + 0.5)
    # the predicted maps: one channel per gene, the values of the prediction output
    import zarr

    g = zarr.open_group(str(pred / "prediction.zarr"), mode="r")
    from napari_histoexpr.io.prediction_store import PREDICTION_ATTR as ATTR

    assert list(sdata.images["predicted"].coords["c"].values) == list(dict(g.attrs)[ATTR]["genes"])
    vals = np.asarray(sdata.images["predicted"].data)
    np.testing.assert_array_equal(np.nan_to_num(vals), np.nan_to_num(np.asarray(g["0"])))


def test_reader_opens_the_store_as_the_section(store):
    demo, out, _ = store
    pyr0, ad0 = open_section(demo.slide, demo.spots)
    reader = get_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    assert [k for *_, k in layers] == ["image", "points"]
    pyr, adata = open_section(None, out)
    assert pyr.level0_shape == pyr0.level0_shape and pyr.mpp == pytest.approx(pyr0.mpp)
    np.testing.assert_array_equal(pyr.read_region(300, 200, 256, 320), pyr0.read_region(300, 200, 256, 320))
    np.testing.assert_allclose(adata.obsm["spatial"], ad0.obsm["spatial"], atol=1e-6)
    np.testing.assert_array_equal(adata.X.toarray(), ad0.X.toarray())
    assert list(adata.obs_names) == list(ad0.obs_names) and list(adata.var_names) == list(ad0.var_names)
    assert adata.uns["histoexpr"]["spot_diameter_px"] == pytest.approx(ad0.uns["histoexpr"]["spot_diameter_px"])
    np.testing.assert_allclose(layers[1][0], ad0.obsm["spatial"][:, ::-1] * pyr0.world_mpp, atol=1e-6)


def test_bad_stores_are_named(store, tmp_path):
    demo, out, _ = store
    sdata = sd.read_zarr(out)
    bare = sd.SpatialData(images={"slide": sdata.images["slide"]}, shapes={"spots": sdata.shapes["spots"]})
    bare.write(tmp_path / "no_table.zarr")
    with pytest.raises(SpotDataError, match="no table"):
        open_section(None, tmp_path / "no_table.zarr")
    assert cli(["export", "--format", "spatialdata", "--slide", str(demo.slide), "--spots", str(demo.spots),
                "--out", str(out)]) == 2  # exists: not overwritten without --overwrite


def test_a_store_made_by_other_tools_opens(tmp_path):
    """Pixel coordinates in 'global' (no units), circles annotated by a table, as spatialdata-io writes
    Visium: the image, the spots at the circles' centres (corner convention -> pixel centres) and the counts."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sparse
    from shapely.geometry import Point
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 300, 400), dtype=np.uint8)
    centres = np.array([[50.5, 60.5], [200.5, 100.5], [350.5, 250.5]])
    circles = gpd.GeoDataFrame({"radius": [20.0] * 3}, geometry=[Point(x, y) for x, y in centres],
                               index=[10, 11, 12])
    counts = sparse.csr_matrix(rng.poisson(5, (3, 4)).astype(np.float32))
    table = ad.AnnData(counts, obs=pd.DataFrame({"region": pd.Categorical(["circles"] * 3), "cell": [12, 10, 11]},
                                                index=["a", "b", "c"]),
                       var=pd.DataFrame(index=["G1", "G2", "G3", "G4"]))
    sdata = sd.SpatialData(images={"he": Image2DModel.parse(img, dims=("c", "y", "x"))},
                           shapes={"circles": ShapesModel.parse(circles)},
                           tables={"t": TableModel.parse(table, region="circles", region_key="region",
                                                         instance_key="cell")})
    sdata.write(tmp_path / "other.zarr")
    pyr, adata = open_section(None, tmp_path / "other.zarr")
    assert pyr.level0_shape == (300, 400)
    np.testing.assert_array_equal(pyr.read_region(0, 0, 300, 400), np.moveaxis(img, 0, -1))
    assert list(adata.obs_names) == ["a", "b", "c"]  # table order; each row at its own circle
    np.testing.assert_allclose(adata.obsm["spatial"], centres[[2, 0, 1]] - 0.5)
    np.testing.assert_array_equal(adata.X.toarray(), counts.toarray())
    assert adata.uns["histoexpr"]["spot_diameter_px"] == pytest.approx(40.0)
