"""Damaged or incomplete Space Ranger folders, made from generated ones: each opens what it can or
fails with a named error that says which file and what is wrong."""

import gzip
import shutil
import warnings

import numpy as np
import pytest

from napari_histoexpr.datasets import make_demo
from napari_histoexpr.errors import NoTissueImageError, SpotDataError, SpotDataWarning
from napari_histoexpr.io.sections import open_section
from napari_histoexpr.io.spots import read_spots


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged")
    return {layout: make_demo(base / layout, size=1024, seed=5, layout=layout) for layout in ("sr2", "mtx", "sr1")}


def _copy(demo, tmp_path):
    d = tmp_path / "outs"
    shutil.copytree(demo.spots, d)
    return d


def test_malformed_positions_row_names_file_and_line(folders, tmp_path):
    d = _copy(folders["sr2"], tmp_path)
    p = d / "spatial" / "tissue_positions.csv"
    lines = p.read_text().splitlines()
    lines[5] = lines[5] + ",1,2,3"  # a row with too many fields
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpotDataError, match=r"tissue_positions\.csv.*line 6"):
        read_spots(d)
    lines = p.read_text().splitlines()
    lines[5] = ",".join(lines[5].split(",")[:6])
    fields = lines[7].split(",")
    fields[4] = "n/a"  # a non-numeric pixel coordinate
    lines[7] = ",".join(fields)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpotDataError, match=r"numeric pxl_row_in_fullres \(first at line 8"):
        read_spots(d)


def test_malformed_headerless_positions(folders, tmp_path):
    d = _copy(folders["sr1"], tmp_path)
    p = d / "spatial" / "tissue_positions_list.csv"
    lines = p.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",oops"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpotDataError, match=r"numeric pxl_col_in_fullres \(first at line 3"):
        read_spots(d)


def test_truncated_matrix_is_named(folders, tmp_path):
    d = _copy(folders["mtx"], tmp_path)
    m = d / "filtered_feature_bc_matrix" / "matrix.mtx.gz"
    data = m.read_bytes()
    m.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpotDataError, match=r"matrix\.mtx\.gz: truncated or corrupt"):
        read_spots(d)
    # a complete gzip of a cut matrix: entries beyond the header's count are missing
    text = gzip.decompress(data).decode().splitlines()
    m.write_bytes(gzip.compress("\n".join(text[: len(text) // 2]).encode()))
    with pytest.raises(SpotDataError, match=r"matrix\.mtx\.gz"):
        read_spots(d)


def test_corrupt_image_falls_back_then_spots_open_without_image(folders, tmp_path):
    d = _copy(folders["sr2"], tmp_path)
    hires = d / "spatial" / "tissue_hires_image.png"
    hires.write_bytes(b"")  # empty
    pyr, adata = open_section(None, d)
    assert pyr is not None and pyr.backend == "visium:lowres" and adata.n_obs >= 10
    (d / "spatial" / "tissue_lowres_image.png").write_bytes(b"\x89PNG garbage")  # corrupt
    with pytest.warns(SpotDataWarning, match="no usable tissue image"):
        pyr, adata = open_section(None, d)
    assert pyr is None and adata.n_obs >= 10 and adata.uns["histoexpr"]["mpp"] > 0
    # blank images (all zero), as some tools' fixtures ship them: the spots still open
    from PIL import Image

    for key in ("hires", "lowres"):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "spatial" / f"tissue_{key}_image.png")
    with pytest.warns(SpotDataWarning):
        pyr, adata = open_section(None, d)
    assert pyr is None
    # the reader gives the spots layer alone, in µm
    from napari_histoexpr._reader import get_reader

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        layers = get_reader(str(d))(str(d))
    assert [k for _, _, k in layers] == ["points"] and any("no usable tissue image" in str(w.message) for w in seen)
    assert layers[0][1]["units"] == "µm"
    # with a slide given, the Visium images are not needed at all
    pyr, _ = open_section(folders["sr2"].slide, d)
    assert pyr is not None and not pyr.backend.startswith("visium")
    with pytest.raises(NoTissueImageError):
        from napari_histoexpr.io.visium import visium_image

        visium_image(adata)


def test_folder_without_matrix_names_the_missing_file(folders, tmp_path):
    from napari_histoexpr._reader import get_reader
    from napari_histoexpr.cli import main as cli

    d = _copy(folders["sr2"], tmp_path)
    (d / "filtered_feature_bc_matrix.h5").unlink()
    reader = get_reader(str(d))
    assert reader is not None  # not napari's generic "no reader": ours says what is missing
    with pytest.raises(SpotDataError, match="filtered_feature_bc_matrix"):
        reader(str(d))
    assert cli(["info", "--spots", str(d)]) == 2


def test_fuzz_findings_are_named(folders, tmp_path):
    """Classes the fuzz pass (benchmarks/fuzz_inputs.py) found raising raw errors or crashing."""
    import json

    import h5py

    from napari_histoexpr.errors import MissingScalefactorsError

    d = _copy(folders["sr2"], tmp_path)
    # duplicated barcodes in the positions
    p = d / "spatial" / "tissue_positions.csv"
    good = p.read_text()
    lines = good.splitlines()
    lines[3] = lines[2].split(",")[0] + "," + ",".join(lines[3].split(",")[1:])
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpotDataError, match="more than once in the positions"):
        read_spots(d)
    p.write_text(good)
    # corrupt sparse indices in the HDF5 matrix: a named error, not a segmentation fault later
    h5 = d / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        idx = f["matrix/indices"][:]
        idx[len(idx) // 2] = 10 ** 6
        f["matrix/indices"][:] = idx
    with pytest.raises(SpotDataError, match="corrupt or incomplete feature-barcode matrix"):
        read_spots(d)
    # scalefactors of the wrong type or undecodable
    d2 = _copy(folders["sr1"], tmp_path / "b")
    sfp = d2 / "spatial" / "scalefactors_json.json"
    sf = json.loads(sfp.read_text())
    sfp.write_text(json.dumps(dict(sf, spot_diameter_fullres={"a": 1})))
    with pytest.raises(MissingScalefactorsError, match="not a positive number"):
        read_spots(d2)
    sfp.write_bytes(b'{"spot_diameter_fullres": \xf4\x80}')
    with pytest.raises(MissingScalefactorsError, match="not valid JSON"):
        read_spots(d2)


def test_st_selection_with_non_finite_coordinates_is_named(tmp_path):
    sel = tmp_path / "S_selection.tsv"
    sel.write_text("x\ty\tpixel_x\tpixel_y\tselected\n2\t3\t40.0\t60.0\t1\n3\t3\tinf\t60.0\t1\n")
    (tmp_path / "S.tsv").write_text("\tG1\tG2\n2x3\t1\t2\n3x3\t3\t4\n")
    with pytest.raises(SpotDataError, match=r"S_selection\.tsv: 1 row\(s\) without a finite pixel_x \(first at line 3"):
        read_spots(sel)
    (tmp_path / "S.tsv").write_bytes(b"\tG1\tG2\n2x3\t1\t2\n3x3\t\xb2\xff\t4\n")
    sel.write_text("x\ty\tpixel_x\tpixel_y\tselected\n2\t3\t40.0\t60.0\t1\n3\t3\t80.0\t60.0\t1\n")
    with pytest.raises(SpotDataError, match=r"S\.tsv"):
        read_spots(sel)
