"""The section manifest: one CSV row per tissue section (see docs/formats.md; opened by :mod:`.sections`).

```
section,patient,image,spots,counts,clusters,mpp
C2,C,images/C2.jpg,spots/C2_selection.tsv,counts/C2.tsv.gz,clusters/C2-cluster-annotation.tsv.gz,
```
Relative paths resolve from the CSV's folder. ``spots`` is a Space Ranger outs folder (Visium HD:
``bin_um`` picks the bin size), an ``.h5ad``, legacy ST files or an ST pipeline folder;
``counts``, ``clusters``, ``mpp`` and ``bin_um`` are optional.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ManifestError

REQUIRED = ("section", "image", "spots")
OPTIONAL = ("patient", "counts", "clusters", "mpp", "bin_um")


@dataclass(frozen=True)
class Section:
    section: str
    patient: str
    image: Path
    spots: Path
    counts: Path | None = None
    clusters: Path | None = None
    mpp: float | None = None
    bin_um: float | None = None  # Visium HD: the bin size to open (default 8 µm)


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
        def positive(col):
            v = str(row.get(col, "") or "").strip()
            if not v:
                return None
            try:
                x = float(v)
            except ValueError:
                raise ManifestError(f"{path.name} line {line}: {col} {v!r} is not a number") from None
            if not (x > 0 and math.isfinite(x)):
                raise ManifestError(f"{path.name} line {line}: {col} must be positive")
            return x

        out.append(Section(
            section=name,
            patient=str(row.get("patient", "") or name).strip() or name,
            image=resolve("image", True),
            spots=resolve("spots", True),
            counts=resolve("counts"),
            clusters=resolve("clusters"),
            mpp=positive("mpp"),
            bin_um=positive("bin_um"),
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
             "mpp": "" if s.mpp is None else repr(s.mpp),
             "bin_um": "" if s.bin_um is None else repr(s.bin_um)} for s in sections]
    cols = ["section", "patient", "image", "spots", "counts", "clusters", "mpp"]
    if any(s.bin_um is not None for s in sections):
        cols.append("bin_um")
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def as_sections(manifest) -> list[Section]:
    """A manifest CSV path read, or a list of :class:`Section` as it is."""
    if isinstance(manifest, (list, tuple)):
        return list(manifest)
    return read_manifest(manifest)
