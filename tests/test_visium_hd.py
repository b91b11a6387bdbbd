"""Visium HD: a generated Space Ranger HD run (``binned_outputs/square_008um|016um``) opens at the
chosen bin size as true-size squares, and a model is compared with it at a stated common scale
(bins summed over the model's window)."""

import json

import numpy as np
import pytest

from napari_histoexpr._reader import get_reader
from napari_histoexpr.cli import main as cli
from napari_histoexpr.data.gene_values import log1p_normalised
from napari_histoexpr.datasets import PLANTED_GENES, make_visium_hd
from napari_histoexpr.errors import SpotDataError
from napari_histoexpr.io.manifest import Section, read_manifest, write_manifest
from napari_histoexpr.io.sections import load_section, open_section
from napari_histoexpr.io.spots import read_spots
from napari_histoexpr.io.visium_hd import aggregate_bins


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    return make_visium_hd(tmp_path_factory.mktemp("hd") / "run", size=1024, mpp=1.0, seed=21)


def test_bin_size_is_chosen_and_read_as_squares(hd, capsys):
    a8 = read_spots(hd.spots)  # the default: 8 µm
    info = a8.uns["histoexpr"]
    assert info["platform"] == "visium_hd" and info["bin_um"] == 8.0 and info["spot_shape"] == "square"
    assert info["mpp"] == 1.0 and info["mpp_source"] == "scalefactors microns_per_pixel"
    assert info["spot_diameter_px"] == 8.0 and a8.obs_names[0].startswith("s_008um_")
    a16 = read_spots(hd.spots, bin_um=16)
    assert a16.uns["histoexpr"]["bin_um"] == 16.0 and 3.5 < a8.n_obs / a16.n_obs < 4.5
    # the bin folder itself opens at its own size
    assert read_spots(hd.spots / "binned_outputs" / "square_016um").n_obs == a16.n_obs
    with pytest.raises(SpotDataError, match=r"no 2 µm bins.*8 µm, 16 µm"):
        read_spots(hd.spots, bin_um=2)
    # the reader: the slide image and the bins as squares of their true size in µm
    reader = get_reader(str(hd.spots))
    layers = reader(str(hd.spots))
    assert [k for *_, k in layers] == ["image", "points"]
    assert layers[1][1]["symbol"] == "square" and layers[1][1]["size"] == pytest.approx(8.0)
    assert cli(["info", "--spots", str(hd.spots), "--bin-um", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spots"]["bin_um"] == 16.0 and out["spots"]["platform"] == "visium_hd"


def test_bins_summed_over_squares_keep_the_planted_pattern(hd):
    pyr, a8 = open_section(hd.slide, hd.spots)
    agg = aggregate_bins(a8, 100.0, pyr.world_mpp)
    n = agg.obs["n_bins"].to_numpy()
    # 12 or 13 bin centres per side fall in a 100 µm square; half-covered squares (tissue edge) are dropped
    assert 12 * 12 <= n.max() <= 13 * 13 and n.min() >= 0.5 * (100 / 8) ** 2
    assert float(agg.X.sum()) <= float(a8.X.sum())
    # every kept square's counts are exactly the sum of the bins whose centres fall inside it
    ij = np.floor(np.asarray(a8.obsm["spatial"]) / 100.0).astype(int)
    first = agg.obs.iloc[0]
    inside = (ij[:, 0] == first["square_col"]) & (ij[:, 1] == first["square_row"])
    np.testing.assert_allclose(np.asarray(agg.X[0].todense()).ravel(), np.asarray(a8.X[inside].sum(0)).ravel())
    # the planted marker follows the tumour fraction of each square (truth class map at 1 µm)
    cm = np.load(hd.truth / "class_map_ds1.npy")
    cx, cy = np.asarray(agg.obsm["spatial"]).T
    tumour = np.array([(cm[int(y - 50):int(y + 50), int(x - 50):int(x + 50)] == 1).mean() for x, y in zip(cx, cy)])
    marker = PLANTED_GENES["tumour"][0]
    v = log1p_normalised(agg, [marker])[:, 0]
    assert np.corrcoef(v, tumour)[0, 1] > 0.8


def test_model_compared_at_the_models_window(hd, trained, tmp_path):
    from napari_histoexpr.infer.spot_prediction import predict_at_spots
    from napari_histoexpr.models.expression import ExpressionModel

    model = ExpressionModel.load(trained, "cpu")
    man = write_manifest(tmp_path / "hd.csv", [Section(section="hd", patient="p", image=hd.slide, spots=hd.spots,
                                                       bin_um=16.0)])
    assert read_manifest(man)[0].bin_um == 16.0
    pyr, adata = load_section(read_manifest(man)[0])
    assert adata.uns["histoexpr"]["bin_um"] == 16.0
    sp = predict_at_spots(model, pyr, adata, "hd")
    assert sp.scale == "Visium HD 16 µm bins summed into 100 µm squares (the model's window)"
    assert sp.square and sp.spot_um == pytest.approx(100.0) and len(sp.spot_ids) > 20
    r = dict(zip(sp.genes, sp.pearson()))
    for g in (gs[0] for gs in PLANTED_GENES.values()):
        assert r[g] > 0.6, (g, r)
    assert cli(["evaluate", "--model", str(trained), "--manifest", str(man), "--out", str(tmp_path / "rep"),
                "--device", "cpu", "--no-baselines"]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["sections"]["hd"]["scale"] == sp.scale


def test_panel_opens_the_chosen_bin_size(hd, make_napari_viewer, qtbot):
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    viewer = make_napari_viewer()
    panel = SlideSpotsWidget(viewer)
    assert panel.setting("bin_um") == 8 and panel.choices("bin_um") == (2, 8, 16)
    panel.configure(bin_um=16)
    w = panel.open(slide=str(hd.slide), spots=str(hd.spots))
    with qtbot.waitSignal(w.finished, timeout=60_000):
        pass
    pts = [ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("kind") == "spots"]
    assert len(pts) == 1 and pts[0].size[0] == pytest.approx(16.0)
    assert str(pts[0].symbol[0]) == "square" and len(pts[0].data) == panel.adata.n_obs
    assert panel.session.section().bin_um == 16.0  # the other panels train/evaluate on the same bins


@pytest.fixture(scope="module")
def hd16(tmp_path_factory):
    """A run whose binned_outputs/ holds only square_016um (as some Space Ranger runs are shared)."""
    return make_visium_hd(tmp_path_factory.mktemp("hd16") / "run", size=512, mpp=1.0, seed=22, bins=(16,))


def test_a_run_without_the_default_bins_opens_the_nearest(hd16, capsys):
    import warnings

    from napari_histoexpr.errors import SpotDataWarning

    a = read_spots(hd16.spots)  # no size asked for: 8 µm is absent, so the nearest (16 µm) opens
    info = a.uns["histoexpr"]
    assert info["bin_um"] == 16.0 and info["bins_available"] == [16.0] and "no 8 µm bins" in info["bin_note"]
    with pytest.raises(SpotDataError, match=r"no 8 µm bins.*16 µm"):  # a size asked for is not swapped
        read_spots(hd16.spots, bin_um=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pyr, ad = open_section(hd16.slide, hd16.spots)
    assert any(issubclass(w.category, SpotDataWarning) and "opened its 16 µm bins" in str(w.message) for w in seen)
    assert ad.uns["histoexpr"]["bin_um"] == 16.0
    assert cli(["info", "--spots", str(hd16.spots)]) == 0
    assert json.loads(capsys.readouterr().out)["spots"]["bin_um"] == 16.0
    # the bin folder itself, or a run that has the default: no note
    assert "bin_note" not in read_spots(hd16.spots / "binned_outputs" / "square_016um").uns["histoexpr"]


def test_panel_lists_the_sizes_found_and_says_which_opened(hd16, make_napari_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    viewer = make_napari_viewer()
    panel = SlideSpotsWidget(viewer)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        w = panel.open(slide=str(hd16.slide), spots=str(hd16.spots))  # the default 8 µm is chosen
        with qtbot.waitSignal(w.finished, timeout=60_000):
            pass
        qtbot.waitUntil(lambda: any("opened its 16 µm bins" in str(n.message) for n in seen), timeout=10_000)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert panel.adata.uns["histoexpr"]["bin_um"] == 16.0
    assert "Visium HD bins found: 16 µm; showing 16 µm" in panel.status
    pts = [ly for ly in viewer.layers if ly.metadata.get("histoexpr", {}).get("kind") == "spots"]
    assert len(pts) == 1 and pts[0].size[0] == pytest.approx(16.0)
