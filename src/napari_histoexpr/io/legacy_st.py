"""Legacy Spatial Transcriptomics (ST): a spots x genes counts TSV whose spot ids are ``XxY`` array
coordinates, placed on the H&E image by one of

* a ``*_selection.tsv`` spot file (ST spot detector: ``x, y, pixel_x, pixel_y[, selected]``);
* a 3 x 3 alignment file (ST pipeline / st_analysis: nine numbers, ``[x, y, 1] @ T`` = pixel);
* nothing: the original ST pipeline's convention that the H&E image is cropped to the array frame,
  array x 1..33 spanning its width and y 1..35 its height (``pixel = (a - 1) * size / (32, 34)``).

A folder with one counts matrix and one image (the ST pipeline / STUtility layout) is read as a
section (:func:`find_st_folder`). Without an image, spots are placed on the 200 µm array pitch in
µm (mpp 1) and re-placed on the image once one is opened (:func:`place_on_frame`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SpotDataError
from .manifest import Section
from .spotdata import ST_PITCH_UM, ST_SPOT_UM, counts_matrix, join_ids, numeric_columns, read_table, spot_anndata


def estimate_st_pitch_px(sel: pd.DataFrame) -> float:
    """Pixels between neighbouring ST spots, from a fit of pixel position on array position."""
    ax = sel["new_x"] if "new_x" in sel else sel["x"]
    ay = sel["new_y"] if "new_y" in sel else sel["y"]
    slopes = []
    for a, p in ((ax, sel["pixel_x"]), (ay, sel["pixel_y"])):
        a = np.asarray(a, float)
        p = np.asarray(p, float)
        if np.ptp(a) > 0:
            slopes.append(abs(np.polyfit(a, p, 1)[0]))
    if not slopes:
        raise SpotDataError("cannot estimate the ST spot pitch: all spots share one array position")
    return float(np.mean(slopes))


def read_legacy_st(counts: str | os.PathLike, selection: str | os.PathLike,
                   mpp: float | None = None, selected_only: bool = True):
    """Read legacy ST counts (spots x genes TSV, ids ``XxY``) + a ``*_selection.tsv`` spot file."""
    counts, selection = Path(counts), Path(selection)
    for p in (counts, selection):
        if not p.exists():
            raise SpotDataError(f"file not found: {p}")
    sel = read_table(selection, sep="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(sel.columns):
        raise SpotDataError(f"{selection.name}: needs columns {sorted(need)}, found {list(sel.columns)}")
    sel = numeric_columns(sel, [c for c in ("x", "y", "new_x", "new_y", "pixel_x", "pixel_y") if c in sel],
                          selection.name)
    if selected_only and "selected" in sel:
        sel = sel[sel["selected"] == 1]
    sel.index = [f"{int(x)}x{int(y)}" for x, y in zip(sel["x"], sel["y"])]
    df = read_table(counts, sep="\t", index_col=0)
    df.index = df.index.astype(str)
    ic, ip = join_ids(df.index, sel.index, f"{counts.name} + {selection.name}")
    df = df.iloc[ic]
    sel = sel.iloc[ip]
    pitch = estimate_st_pitch_px(sel)
    if mpp is None:
        mpp, src = ST_PITCH_UM / pitch, "estimated from the 200 µm ST spot pitch"
    else:
        src = "given"
    obs = pd.DataFrame({"array_x": sel["x"].to_numpy(), "array_y": sel["y"].to_numpy()},
                       index=df.index)
    var = pd.DataFrame(index=df.columns.astype(str))
    X = counts_matrix(df, counts.name)
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    info = {
        "platform": "st",
        "source": str(counts),
        "spot_diameter_px": pitch * ST_SPOT_UM / ST_PITCH_UM,
        "pitch_px": pitch,
        "mpp": float(mpp),
        "mpp_source": src,
    }
    return spot_anndata(X, obs, var, xy, info)


def guess_st_counts(selection: Path) -> Path | None:
    """HER2ST layout: ``spots/C2_selection.tsv`` -> ``counts/C2.tsv.gz``."""
    stem = selection.name.split("_selection")[0]
    for folder in (selection.parent, selection.parent.parent / "counts"):
        for name in (f"{stem}.tsv.gz", f"{stem}.tsv", f"{stem}_counts.tsv.gz", f"{stem}_counts.tsv"):
            if (folder / name).exists() and (folder / name) != selection:
                return folder / name
    return None


#: the ST array: x 1..33, y 1..35 (the image is cropped to this frame without an alignment)
ST_FRAME = (33, 35)
_ID = re.compile(r"^\s*(-?\d+(?:\.\d+)?)x(-?\d+(?:\.\d+)?)\s*$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def parse_st_ids(ids, source: str) -> np.ndarray:
    """``(N, 2)`` array coordinates from ``XxY`` spot ids (fractional after alignment, e.g.
    ``10.03x12.95``); a :class:`SpotDataError` names the first id that is not one."""
    out = np.empty((len(ids), 2), float)
    for i, sid in enumerate(ids):
        m = _ID.match(str(sid))
        if m is None:
            raise SpotDataError(f"{source}: spot id {str(sid)!r} (row {i + 2}) is not an ST 'XxY' array "
                                f"coordinate")
        out[i] = float(m.group(1)), float(m.group(2))
    if not np.isfinite(out).all():
        raise SpotDataError(f"{source}: non-finite array coordinates")
    return out


def read_alignment(path: str | os.PathLike) -> np.ndarray:
    """A 3 x 3 ST alignment (nine numbers, whitespace separated, row-major; ``[x, y, 1] @ T``)."""
    path = Path(path)
    try:
        vals = [float(v) for v in path.read_text().split()]
    except (OSError, ValueError) as e:
        raise SpotDataError(f"{path.name}: not an alignment file ({e})") from e
    if len(vals) != 9 or not np.isfinite(vals).all():
        raise SpotDataError(f"{path.name}: an alignment file holds 9 numbers, found {len(vals)}")
    t = np.array(vals).reshape(3, 3)
    if abs(np.linalg.det(t[:2, :2])) < 1e-9:
        raise SpotDataError(f"{path.name}: the alignment maps the array onto a line")
    return t


def frame_transform(image_hw: tuple[int, int]) -> np.ndarray:
    """The frame convention as an alignment: array (1, 1) at pixel (0, 0), (33, 35) at the far corner."""
    h, w = image_hw
    sx, sy = w / (ST_FRAME[0] - 1), h / (ST_FRAME[1] - 1)
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [-sx, -sy, 1.0]])


def _apply(t: np.ndarray, arr: np.ndarray) -> np.ndarray:
    return np.hstack([arr, np.ones((len(arr), 1))]) @ t[:, :2]


def read_st_matrix(counts: str | os.PathLike, alignment: str | os.PathLike | None = None,
                   mpp: float | None = None):
    """Legacy ST counts without a spot file: positions from ``alignment``, else provisional ones on
    the 200 µm pitch (µm, mpp 1) that :func:`place_on_frame` moves onto the image's frame."""
    counts = Path(counts)
    if not counts.exists():
        raise SpotDataError(f"file not found: {counts}")
    df = read_table(counts, sep="\t", index_col=0)
    if df.empty:
        raise SpotDataError(f"{counts.name}: no spots")
    if not df.index.is_unique:
        raise SpotDataError(f"{counts.name}: spot ids appear more than once (e.g. "
                            f"{list(df.index[df.index.duplicated()][:3])})")
    arr = parse_st_ids(df.index, counts.name)
    X = counts_matrix(df, counts.name)
    info = {"platform": "st", "source": str(counts)}
    if alignment is not None:
        t = read_alignment(alignment)
        pitch = float(np.sqrt(abs(np.linalg.det(t[:2, :2]))))
        xy = _apply(t, arr)
        info.update(positions=f"alignment {Path(alignment).name}")
    else:
        pitch, xy = ST_PITCH_UM, (arr - 1.0) * ST_PITCH_UM
        info.update(positions="st-frame")  # provisional: µm on the array pitch
    info.update(spot_diameter_px=pitch * ST_SPOT_UM / ST_PITCH_UM, pitch_px=pitch)
    if mpp is not None:
        info.update(mpp=float(mpp), mpp_source="given")
    else:
        info.update(mpp=ST_PITCH_UM / pitch, mpp_source="estimated from the 200 µm ST spot pitch")
    obs = pd.DataFrame({"array_x": arr[:, 0], "array_y": arr[:, 1]}, index=df.index.astype(str))
    return spot_anndata(X, obs, pd.DataFrame(index=df.columns.astype(str)), xy, info)


def place_on_frame(adata, image_hw: tuple[int, int]) -> None:
    """Move provisionally placed ST spots (``positions == "st-frame"``) onto an image cropped to the
    array frame; a no-op for spots placed otherwise."""
    info = adata.uns["histoexpr"]
    if info.get("positions") != "st-frame":
        return
    t = frame_transform(image_hw)
    arr = adata.obs[["array_x", "array_y"]].to_numpy(float)
    adata.obsm["spatial"] = _apply(t, arr)
    pitch = float(np.sqrt(t[0, 0] * t[1, 1]))
    info.update(positions="st-frame (image cropped to the array frame)", pitch_px=pitch,
                spot_diameter_px=pitch * ST_SPOT_UM / ST_PITCH_UM)
    if info.get("mpp_source") != "given":
        info["mpp"] = ST_PITCH_UM / pitch


def looks_like_st_counts(path: str | os.PathLike) -> bool:
    """A TSV(.gz) whose first data row's id is an ``XxY`` array coordinate."""
    p = Path(path)
    if not p.is_file() or not p.name.lower().endswith((".tsv", ".tsv.gz")) or "_selection" in p.name:
        return False
    try:
        head = pd.read_csv(p, sep="\t", index_col=0, nrows=1)
    except Exception:
        return False
    return len(head) == 1 and _ID.match(str(head.index[0])) is not None


@dataclass
class STFolder:
    counts: Path
    image: Path | None
    selection: Path | None
    alignment: Path | None


def st_counts_in(folder: str | os.PathLike) -> list[Path]:
    """The legacy ST counts matrices (:func:`looks_like_st_counts`) directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if looks_like_st_counts(f))


def find_st_folder(folder: str | os.PathLike) -> STFolder:
    """The files of an ST pipeline / STUtility folder: one counts matrix (``XxY`` ids), at most one
    H&E image, optionally a ``*_selection.tsv`` and an ``*alignment*.txt``; a :class:`SpotDataError`
    names what is missing or ambiguous."""
    folder = Path(folder)
    counts = st_counts_in(folder)
    if not counts:
        raise SpotDataError(f"{folder.name}: no ST counts matrix (a TSV whose spot ids are 'XxY')")
    if len(counts) > 1:
        raise SpotDataError(f"{folder.name}: several ST sections ({', '.join(f.name for f in counts)}); "
                            f"open the folder with File › Open to lay them out side by side, or one section "
                            f"at a time (its counts file and image)")
    files = sorted(f for f in folder.iterdir() if f.is_file())
    images = [f for f in files if f.suffix.lower() in _IMAGE_SUFFIXES]
    if len(images) > 1:
        raise SpotDataError(f"{folder.name}: several images ({', '.join(f.name for f in images)}); "
                            f"open the slide and the counts separately")
    sel = [f for f in files if f.name.endswith("_selection.tsv")]
    ali = [f for f in files if "alignment" in f.name.lower() and f.suffix.lower() == ".txt"]
    return STFolder(counts[0], images[0] if images else None, sel[0] if sel else None, ali[0] if ali else None)


_COUNT_TAILS = ("_stdata", "-stdata", "_counts", "-counts", "_count", "_matrix", "_expr")


def section_key(counts: Path) -> str:
    """A counts file's section name: its name without ``.tsv(.gz)`` and a tail such as ``_stdata``."""
    name = re.sub(r"\.tsv(\.gz)?$", "", counts.name, flags=re.I)
    for tail in _COUNT_TAILS:
        if name.lower().endswith(tail) and len(name) > len(tail):
            return name[: -len(tail)]
    return name


def st_sections_in(folder: str | os.PathLike) -> list[STFolder]:
    """The sections of a folder holding several legacy ST sections (STUtility ships them so: e.g.
    ``A1_stdata.tsv.gz`` + ``A1_HE.jpg`` [+ ``A1_selection.tsv``], ``B1_…``): each counts matrix with
    the image (and selection file) whose name holds its section name — the longest such name when
    several do. Each :class:`STFolder`'s ``alignment`` is ``None``. A counts file without exactly one
    image is a :class:`SpotDataError` naming it."""
    folder = Path(folder)
    counts = st_counts_in(folder)
    keys = {c: section_key(c).lower() for c in counts}
    files = sorted(f for f in folder.iterdir() if f.is_file() and f not in keys)

    def owner(f: Path) -> Path | None:
        hits = [c for c, k in keys.items() if k and k in f.name.lower()]
        return max(hits, key=lambda c: len(keys[c])) if hits else None

    out = []
    for c in counts:
        images = [f for f in files if f.suffix.lower() in _IMAGE_SUFFIXES and owner(f) == c]
        sel = [f for f in files if f.name.endswith("_selection.tsv") and owner(f) == c]
        if len(images) != 1:
            found = "no image" if not images else "several images: " + ", ".join(f.name for f in images)
            raise SpotDataError(f"{folder.name}: section {section_key(c)} ({c.name}) has {found}; "
                                "name each H&E image after its counts file (e.g. A1_stdata.tsv.gz + A1_HE.jpg) "
                                "or list the sections in a manifest")
        out.append(STFolder(c, images[0], sel[0] if len(sel) == 1 else None, None))
    return out


def st_folder_sections(folder: str | os.PathLike) -> list[Section]:
    """The sections of a folder of several legacy ST sections (:func:`st_sections_in`) as manifest
    sections, named after their counts files."""
    out = []
    for st in st_sections_in(folder):
        name = section_key(st.counts)
        spots, counts = (st.selection, st.counts) if st.selection is not None else (st.counts, None)
        out.append(Section(section=name, patient=name, image=st.image, spots=spots, counts=counts))
    return out


def read_st_folder(folder: str | os.PathLike, mpp: float | None = None):
    """The spots of an ST folder (:func:`find_st_folder`); its image path in ``uns['histoexpr']['image']``."""
    st = find_st_folder(folder)
    if st.selection is not None:
        adata = read_legacy_st(st.counts, st.selection, mpp=mpp)
    else:
        adata = read_st_matrix(st.counts, st.alignment, mpp=mpp)
    if st.image is not None:
        adata.uns["histoexpr"]["image"] = str(st.image)
    return adata
