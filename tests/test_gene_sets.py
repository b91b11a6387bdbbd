"""Gene-set scores: scanpy's score_genes semantics (checked against scanpy itself), set files and typed
sets, and ``histoexpr predict --score`` (maps, tables, r of predicted vs measured scores)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_histoexpr.data.gene_sets import (
    BUILTIN,
    GeneSet,
    control_genes,
    parse_gene_sets,
    parse_set_arg,
    prepare,
)
from napari_histoexpr.errors import GeneSetError


def _adata(n_spots=200, n_genes=300, seed=0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    level = rng.gamma(1.0, 1.0, n_genes)  # genes of very different mean expression
    x = np.log1p(rng.poisson(level * rng.gamma(4.0, 0.25, (n_spots, 1)), (n_spots, n_genes))).astype(np.float64)
    return ad.AnnData(X=x, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))


@pytest.mark.parametrize("n_genes", [300, 130])
def test_scores_are_scanpy_score_genes(n_genes):
    """With bins of fewer genes than ctrl_size, scanpy takes every gene of a set gene's bin as a
    control (no sampling): the two must agree to the last digit."""
    import scanpy as sc

    adata = _adata(n_genes=n_genes)
    genes = ["G3", "G10", "G11", "G50", "G120", "G7"]
    sc.tl.score_genes(adata, genes, ctrl_size=50, n_bins=25, random_state=0, score_name="sc")
    means = pd.Series(np.asarray(adata.X).mean(0), index=adata.var_names)
    ours = prepare(GeneSet("s", tuple(genes)), means, ctrl_size=50, n_bins=25)
    assert set(ours.genes) == set(genes) and not set(ours.controls) & set(genes)
    got = ours.of(np.asarray(adata.X), list(adata.var_names))
    np.testing.assert_allclose(got, adata.obs["sc"].to_numpy(), rtol=0, atol=1e-12)


def test_controls_come_from_the_set_genes_expression_bins():
    means = pd.Series(np.arange(100.0), index=[f"g{i}" for i in range(100)])
    ctrl = control_genes(means, ["g0", "g55"], ctrl_size=50, n_bins=25)  # bins of round(100 / 24) = 4 genes
    assert ctrl == ["g1", "g2", "g56", "g57", "g58"]  # rank // 4: ranks 1-3, then 56-59 share a bin
    # more genes per bin than ctrl_size: ctrl_size drawn from the bin, reproducibly
    big = pd.Series(np.arange(2400.0), index=[f"g{i}" for i in range(2400)])
    a, b = control_genes(big, ["g5"], ctrl_size=10), control_genes(big, ["g5"], ctrl_size=10)
    assert a == b and len(a) == 10 and all(int(g[1:]) < 100 for g in a)
    # a small pool (a 15-gene model) gets bins of ~5 genes, so there are controls
    small = pd.Series(np.arange(15.0), index=[f"g{i}" for i in range(15)])
    assert control_genes(small, ["g0"]) == ["g1", "g2", "g3", "g4", "g5", "g6"]  # 3 bins: ranks 1-7 share one


def test_sets_from_files_typed_and_built_in(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("HALLMARK_X\thttp://example\tA\tB\tC\nmy set\t\tD\tE\n")
    sets = parse_gene_sets(gmt)
    assert [(s.name, s.genes) for s in sets] == [("HALLMARK_X", ("A", "B", "C")), ("my set", ("D", "E"))]
    txt = tmp_path / "hypoxia.txt"
    txt.write_text("# my list\nVEGFA, CA9\nSLC2A1\n")
    assert parse_gene_sets(txt)[0].name == "hypoxia" and parse_gene_sets(txt)[0].genes == ("VEGFA", "CA9", "SLC2A1")
    assert parse_set_arg("epi = ERBB2, KRT8 ,EPCAM")[0].genes == ("ERBB2", "KRT8", "EPCAM")
    assert parse_set_arg("Proliferation")[0] is BUILTIN["proliferation"]
    assert "Nielsen" in BUILTIN["proliferation"].source and len(BUILTIN["proliferation"].genes) == 11
    assert len(parse_set_arg(str(gmt))) == 2
    with pytest.raises(GeneSetError, match="unknown gene set 'nope'"):
        parse_set_arg("nope")
    with pytest.raises(GeneSetError, match="NAME=G1,G2"):
        parse_set_arg("x=")
    bad = tmp_path / "bad.gmt"
    bad.write_text("onlyname\n")
    with pytest.raises(GeneSetError, match="line 1"):
        parse_gene_sets(bad)
    means = pd.Series([1.0, 2.0, 3.0], index=["A", "B", "C"])
    with pytest.raises(GeneSetError, match="none of its genes"):
        prepare(GeneSet("z", ("X1", "X2")), means)
    s = prepare(GeneSet("lower", ("a", "Q")), pd.Series(np.arange(12.0), index=list("ABCDEFGHIJKL")))
    assert s.genes == ["A"] and s.missing == ["Q"]  # case-insensitive; what is missing is said


def test_cli_predict_scores_maps_and_spots_alike(trained, cohort, tmp_path, capsys):
    """``predict --score``: the score map is the set mean minus the controls' mean of the predicted
    maps; the same controls score the measured spots; r of predicted vs measured is reported and the
    planted epithelial program is recovered on an unseen section."""
    import anndata as ad
    import zarr

    from napari_histoexpr.cli import main as cli

    d = cohort["demos"][3]
    out = tmp_path / "pred"
    assert cli(["predict", "--model", str(trained), "--slide", str(d.slide), "--spots", str(d.spots), "--out",
                str(out), "--device", "cpu", "--stride-um", "50", "--score", "epithelium=ERBB2,KRT8,EPCAM,CDH1",
                "--score", "stroma"]) == 0
    summary = json.loads((out / "summary.json").read_text())["scores"]
    assert set(summary) == {"epithelium", "stroma"}
    epi = summary["epithelium"]
    assert epi["genes"] == ["ERBB2", "KRT8", "EPCAM", "CDH1"] and epi["controls"]
    assert "COL5A1" in summary["stroma"]["missing"]  # a built-in gene the model does not predict
    g = zarr.open_group(str(out / "prediction.zarr"), mode="r")
    genes = list(g.attrs["histoexpr_prediction"]["genes"])
    level0 = g["0"][:]
    with warnings.catch_warnings():  # off tissue every value is NaN: so is the score
        warnings.simplefilter("ignore", RuntimeWarning)
        want = (np.nanmean(level0[[genes.index(x) for x in epi["genes"]]], 0)
                - np.nanmean(level0[[genes.index(x) for x in epi["controls"]]], 0))
    np.testing.assert_allclose(g["scores"][0], want, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert g.attrs["histoexpr_scores"]["names"] == ["epithelium", "stroma"]
    t = ad.read_h5ad(out / "prediction.h5ad")
    np.testing.assert_allclose(t.obs["score: epithelium"], want[t.obs["row"], t.obs["col"]], rtol=1e-5, atol=1e-5)
    s = ad.read_h5ad(out / "spots_prediction.h5ad")
    meas = (s.layers["measured"][:, [list(s.var_names).index(x) for x in epi["genes"]]].mean(1)
            - s.layers["measured"][:, [list(s.var_names).index(x) for x in epi["controls"]]].mean(1))
    np.testing.assert_allclose(s.obs["score: epithelium (measured)"], meas, rtol=1e-5, atol=1e-5)
    r = np.corrcoef(s.obs["score: epithelium (predicted)"], s.obs["score: epithelium (measured)"])[0, 1]
    assert epi["r_spots"] == pytest.approx(r, abs=1e-6) and r > 0.5
    assert json.loads((out / "spots_report.json").read_text())["scores"]["epithelium"]["r"] == pytest.approx(r)
    assert "score 'epithelium' on 4 genes" in capsys.readouterr().err
    # a set the model cannot score fails before any slide is read
    assert cli(["predict", "--model", str(trained), "--slide", str(d.slide), "--out", str(tmp_path / "x"),
                "--score", "none=NOPE1,NOPE2"]) == 2
    assert not (tmp_path / "x").exists()
