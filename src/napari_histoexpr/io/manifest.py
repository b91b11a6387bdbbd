"""The section manifest: one CSV row per tissue section (see docs/formats.md).

```
section,patient,image,spots,counts,clusters,mpp
C2,C,images/C2.jpg,spots/C2_selection.tsv,counts/C2.tsv.gz,clusters/C2-cluster-annotation.tsv.gz,
```
Relative paths resolve from the CSV's folder. ``spots`` is a Space Ranger outs folder, an ``.h5ad``
or a legacy ST selection TSV (then ``counts`` is its counts TSV); ``clusters`` and ``mpp`` are
optional.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ManifestError

REQUIRED = ("section", "image", "spots")
OPTIONAL = ("patient", "counts", "clusters", "mpp")


@dataclass(frozen=True)
class Section:
    section: str
    patient: str
    image: Path
    spots: Path
    counts: Path | None = None
    clusters: Path | None = None
    mpp: float | None = None


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[Section]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ManifestError(f"cannot read manifest {path.name}: {e}") from e
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{path.name}: missing column(s) {missing}; needs {list(REQUIRED)}")
    base = path.parent
    out = []
    seen = set()
    for i, row in df.iterrows():
        line = i + 2

        def resolve(col, required=False):
            v = str(row.get(col, "") or "").strip()
            if not v:
                if required:
                    raise ManifestError(f"{path.name} line {line}: empty {col!r}")
                return None
            p = Path(v)
            p = p if p.is_absolute() else base / p
            if check_files and not p.exists():
                raise ManifestError(f"{path.name} line {line}: {col} file not found: {p}")
            return p

        name = str(row["section"]).strip()
        if not name:
            raise ManifestError(f"{path.name} line {line}: empty 'section'")
        if name in seen:
            raise ManifestError(f"{path.name} line {line}: duplicate section {name!r}")
        seen.add(name)
        mpp = None
        mv = str(row.get("mpp", "") or "").strip()
        if mv:
            try:
                mpp = float(mv)
            except ValueError:
                raise ManifestError(f"{path.name} line {line}: mpp {mv!r} is not a number") from None
            if not (mpp > 0 and math.isfinite(mpp)):
                raise ManifestError(f"{path.name} line {line}: mpp must be positive")
        out.append(Section(
            section=name,
            patient=str(row.get("patient", "") or name).strip() or name,
            image=resolve("image", True),
            spots=resolve("spots", True),
            counts=resolve("counts"),
            clusters=resolve("clusters"),
            mpp=mpp,
        ))
    if not out:
        raise ManifestError(f"{path.name}: no sections")
    return out


def write_manifest(path: str | os.PathLike, sections: list[Section]) -> Path:
    """Write sections as a manifest with paths relative to the CSV where possible."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(p):
        if p is None:
            return ""
        p = Path(p).resolve()
        try:
            return str(p.relative_to(base))
        except ValueError:
            return str(p)

    rows = [{"section": s.section, "patient": s.patient, "image": rel(s.image), "spots": rel(s.spots),
             "counts": rel(s.counts), "clusters": rel(s.clusters),
             "mpp": "" if s.mpp is None else repr(s.mpp)} for s in sections]
    pd.DataFrame(rows, columns=list(REQUIRED[:1]) + ["patient", "image", "spots", "counts",
                                                     "clusters", "mpp"]).to_csv(path, index=False)
    return path


def load_section(section: Section):
    """Open a section's slide and spots, consistent in scale: returns ``(SlidePyramid, AnnData)``.

    The mpp comes from the manifest if given, else from the slide's metadata, else from the spot
    geometry (ST pitch / Visium spot size). Spots outside the image raise an error.
    """
    from .slides import open_slide
    from .spots import check_spots_in_image, read_clusters, read_spots

    slide = open_slide(section.image, mpp=section.mpp)
    adata = read_spots(section.spots, counts=section.counts, mpp=section.mpp)
    harmonise_mpp(slide, adata)
    check_spots_in_image(adata, slide.level0_shape)
    if section.clusters is not None:
        read_clusters(adata, section.clusters)
    adata.uns["histoexpr"]["section"] = section.section
    adata.uns["histoexpr"]["patient"] = section.patient
    return slide, adata


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
