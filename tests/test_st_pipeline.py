"""Legacy ST in the original ST pipeline / STUtility layout: a counts TSV whose spot ids are ``XxY``
array coordinates and an H&E JPEG cropped to the array frame, no ``*_selection.tsv``. Generated
folders with a planted relationship: dark blobs drawn at the spots where ERBB2 is high."""

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_histoexpr._reader import get_reader
from napari_histoexpr.cli import main as cli
from napari_histoexpr.errors import SpotDataError
from napari_histoexpr.io.manifest import Section
from napari_histoexpr.io.sections import load_section, open_section
from napari_histoexpr.io.spots import read_spots

W, H = 1056, 1122  # 33 px per array step in x and y (32 and 34 steps across the frame)


def _st_folder(path, rng, alignment=None):
    """Spots on x 4..30, y 4..32 (every other one, some ids fractional as after alignment); ERBB2 high
    on a random third of them, each drawn as a dark blob at its frame position (or aligned one)."""
    path.mkdir(parents=True)
    ids, arr = [], []
    for x in range(4, 31, 2):
        for y in range(4, 33, 2):
            ax, ay = (x + 0.03, y - 0.05) if (x + y) % 4 == 0 else (x, y)
            arr.append((ax, ay))
            ids.append(f"{ax:g}x{ay:g}")
    arr = np.array(arr)
    hot = rng.random(len(arr)) < 1 / 3
    genes = ["ERBB2", "ACTB", "GAPDH", "COL1A1"]
    counts = rng.poisson(3.0, (len(arr), len(genes)))
    counts[hot, 0] += 40
    pd.DataFrame(counts, index=ids, columns=genes).to_csv(gzip.open(path / "sample_stdata.tsv.gz", "wt"), sep="\t")
    if alignment is None:
        xy = (arr - 1) * [W / 32, H / 34]
    else:
        np.savetxt(path / "alignment_table.txt", alignment.reshape(1, 9))
        xy = np.hstack([arr, np.ones((len(arr), 1))]) @ alignment[:, :2]
    img = np.full((H, W, 3), (236, 220, 232), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    for (px, py), h in zip(xy, hot):
        if h:
            img[(xx - px) ** 2 + (yy - py) ** 2 < 12 ** 2] = (70, 30, 110)
    Image.fromarray(img).save(path / "HE.jpg", quality=92)
    return ids, xy, hot


def test_st_pipeline_folder_opens_on_its_image(tmp_path):
    ids, xy, hot = _st_folder(tmp_path / "st", np.random.default_rng(0))
    reader = get_reader(str(tmp_path / "st"))
    assert reader is not None
    layers = reader(str(tmp_path / "st"))
    assert [kind for *_, kind in layers] == ["image", "points"]
    pyr, adata = open_section(None, tmp_path / "st")
    assert pyr.level0_shape == (H, W) and list(adata.obs_names) == ids
    np.testing.assert_allclose(adata.obsm["spatial"], xy, atol=1e-6)
    assert adata.uns["histoexpr"]["mpp"] == pytest.approx(200 / 33) and pyr.mpp == pytest.approx(200 / 33)
    # the planted relationship: the image is dark exactly where ERBB2 is high
    gray = np.asarray(pyr.read_region(0, 0, H, W, level=0), float).mean(2)
    at = gray[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    erbb2 = np.asarray(adata[:, "ERBB2"].X.todense()).ravel()
    assert (at[hot] < 120).all() and (at[~hot] > 200).all() and (erbb2[hot] > erbb2[~hot].max()).all()
    # the points layer puts the spots at the same place in µm, with the 100 µm ST spot size
    data, kwargs, _ = layers[1]
    np.testing.assert_allclose(data, xy[:, ::-1] * 200 / 33, atol=1e-6)
    assert kwargs["size"] == pytest.approx(100.0)


def test_counts_and_image_given_separately_and_in_a_manifest(tmp_path, capsys):
    ids, xy, _ = _st_folder(tmp_path / "st", np.random.default_rng(1))
    counts, image = tmp_path / "st" / "sample_stdata.tsv.gz", tmp_path / "st" / "HE.jpg"
    # counts alone: placed on the 200 µm pitch in µm (no image to fit the frame to)
    alone = read_spots(counts)
    np.testing.assert_allclose(alone.obsm["spatial"][0], (np.array(ids[0].split("x"), float) - 1) * 200)
    assert get_reader(str(counts)) is not None
    pyr, adata = load_section(Section(section="s", patient="p", image=image, spots=counts))
    np.testing.assert_allclose(adata.obsm["spatial"], xy, atol=1e-6)
    assert cli(["info", "--slide", str(image), "--spots", str(counts), "--gene", "ERBB2"]) == 0
    out = capsys.readouterr().out
    assert '"ERBB2"' in out and "image cropped to the array frame" in out


def test_alignment_file_places_the_spots(tmp_path):
    t = np.array([[30.0, 1.5, 0.0], [-1.2, 31.0, 0.0], [20.0, 15.0, 1.0]])
    _, xy, _ = _st_folder(tmp_path / "st", np.random.default_rng(2), alignment=t)
    _, adata = open_section(None, tmp_path / "st")
    np.testing.assert_allclose(adata.obsm["spatial"], xy, atol=1e-6)
    assert adata.uns["histoexpr"]["positions"] == "alignment alignment_table.txt"


def test_bad_st_inputs_are_named(tmp_path):
    _st_folder(tmp_path / "st", np.random.default_rng(3))
    counts = tmp_path / "st" / "sample_stdata.tsv.gz"
    df = pd.read_csv(counts, sep="\t", index_col=0)
    df.index = [*df.index[:4], "spot_5", *df.index[5:]]
    bad = tmp_path / "bad_stdata.tsv"
    df.to_csv(bad, sep="\t")
    assert get_reader(str(bad)) is not None  # the first id is an array coordinate
    with pytest.raises(SpotDataError, match=r"bad_stdata\.tsv.*'spot_5' \(row 6\)"):
        read_spots(bad)
    (tmp_path / "st" / "alignment.txt").write_text("1 2 3\n")
    with pytest.raises(SpotDataError, match=r"alignment\.txt.*9 numbers"):
        open_section(None, tmp_path / "st")
    other = tmp_path / "table.tsv"
    pd.DataFrame({"a": [1, 2]}, index=["r1", "r2"]).to_csv(other, sep="\t")
    assert get_reader(str(other)) is None  # not ST counts: left to other readers
    (tmp_path / "st" / "alignment.txt").unlink()
    (tmp_path / "st" / "second_stdata.tsv").write_text(bad.read_text())
    with pytest.raises(SpotDataError, match="several ST sections"):
        read_spots(tmp_path / "st")


def test_a_folder_of_several_st_sections_opens_side_by_side(tmp_path):
    """STUtility's layout: several sections' counts and images in one folder, paired by name; the reader
    lays them out left to right as a manifest does, each section's spots on its own image."""
    from napari_histoexpr.io.legacy_st import st_folder_sections

    rng = np.random.default_rng(5)
    folder = tmp_path / "stutility"
    folder.mkdir()
    truth = {}
    for name in ("A1", "B1", "B10"):  # B1 is a prefix of B10: each image goes to the longest name it holds
        ids, xy, hot = _st_folder(tmp_path / name, rng)
        (tmp_path / name / "sample_stdata.tsv.gz").rename(folder / f"{name}_stdata.tsv.gz")
        (tmp_path / name / "HE.jpg").rename(folder / f"{name}_HE.jpg")
        truth[name] = (ids, xy, hot)
    secs = st_folder_sections(folder)
    assert sorted((s.section, s.image.name, s.spots.name) for s in secs) == [
        ("A1", "A1_HE.jpg", "A1_stdata.tsv.gz"), ("B1", "B1_HE.jpg", "B1_stdata.tsv.gz"),
        ("B10", "B10_HE.jpg", "B10_stdata.tsv.gz")]
    layers = get_reader(str(folder))(str(folder))
    assert [k for *_, k in layers] == ["image", "points"] * 3
    mpp = 200 / 33
    for i, name in enumerate(s.section for s in secs):
        ids, xy, hot = truth[name]
        img_kw, (pts, pts_kw, _) = layers[2 * i][1], layers[2 * i + 1]
        assert img_kw["name"] == name and pts_kw["name"].startswith(name)
        offset = i * (W * mpp + 500.0)  # left to right, 500 µm apart
        assert img_kw["translate"][1] == pytest.approx(offset, abs=1e-6)
        np.testing.assert_allclose(pts, xy[:, ::-1] * mpp + [0.0, offset], atol=1e-6)
    # one section given on its own still names the layout problem
    with pytest.raises(SpotDataError, match="several ST sections.*side by side"):
        open_section(None, folder)
    # a section without its image is named
    (folder / "B10_HE.jpg").unlink()
    with pytest.raises(SpotDataError, match="B10.*no image"):
        st_folder_sections(folder)
