"""Cohort manifest (one row per slide) and patient-level folds.

```
id,slide,patient,bulk,time,event,tissue
S01,slides/S01.svs,P01,bulk/S01.tsv,812,1,breast
```
``slide`` any supported slide; ``patient`` groups slides (folds never split a patient); ``bulk``
optional per-slide expression file (two columns: gene, value; raw counts or TPM); ``time``/``event``
optional survival (event 1 = death/progression, 0 = censored); ``tissue`` optional (multi-task).
Relative paths resolve from the CSV's folder. A cohort-wide bulk table (rows = ids, columns =
genes) can be given instead of per-slide files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ManifestError


@dataclass(frozen=True)
class CohortSlide:
    id: str
    slide: Path
    patient: str
    bulk: Path | None = None
    time: float | None = None
    event: int | None = None
    tissue: str | None = None


def read_cohort(path: str | os.PathLike) -> list[CohortSlide]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"cohort manifest not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip().lower() for c in df.columns]
    if "slide" not in df.columns:
        raise ManifestError(f"{path.name}: needs a 'slide' column (and usually patient, bulk, time, event)")
    out, seen = [], set()
    for i, r in df.iterrows():
        slide = (path.parent / r["slide"]).resolve()
        if not slide.exists():
            raise ManifestError(f"{path.name} line {i + 2}: slide not found: {r['slide']}")
        sid = r.get("id") or slide.stem
        if sid in seen:
            raise ManifestError(f"{path.name} line {i + 2}: duplicate id {sid!r}")
        seen.add(sid)
        bulk = (path.parent / r["bulk"]).resolve() if r.get("bulk") else None
        if bulk is not None and not bulk.exists():
            raise ManifestError(f"{path.name} line {i + 2}: bulk file not found: {r['bulk']}")
        t = float(r["time"]) if r.get("time") not in (None, "") else None
        e = int(float(r["event"])) if r.get("event") not in (None, "") else None
        out.append(CohortSlide(sid, slide, r.get("patient") or sid, bulk, t, e, r.get("tissue") or None))
    return out


def write_cohort(path: str | os.PathLike, slides: list[CohortSlide]) -> Path:
    path = Path(path)
    rows = [{"id": s.id, "slide": os.path.relpath(s.slide, path.parent), "patient": s.patient,
             "bulk": os.path.relpath(s.bulk, path.parent) if s.bulk else "",
             "time": "" if s.time is None else s.time, "event": "" if s.event is None else s.event,
             "tissue": s.tissue or ""} for s in slides]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def bulk_matrix(slides: list[CohortSlide], table: str | os.PathLike | None = None) -> pd.DataFrame:
    """Slides x genes bulk expression (the genes all slides share)."""
    if table is not None:
        df = pd.read_csv(table, sep=None, engine="python", index_col=0)
        missing = [s.id for s in slides if s.id not in df.index]
        if missing:
            raise ManifestError(f"bulk table {Path(table).name} has no row for {missing[:3]}")
        return df.loc[[s.id for s in slides]].astype(float)
    rows = {}
    for s in slides:
        if s.bulk is None:
            raise ManifestError(f"slide {s.id} has no bulk file (cohort column 'bulk') and no bulk table was given")
        b = pd.read_csv(s.bulk, sep=None, engine="python", header=None, index_col=0, comment="#")
        b = b.iloc[:, -1]
        rows[s.id] = pd.to_numeric(b, errors="coerce")
    df = pd.DataFrame(rows).T
    return df.dropna(axis=1).astype(float)


def patient_folds(slides: list[CohortSlide], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` test index arrays; all slides of a patient fall in the same fold."""
    from sklearn.model_selection import GroupKFold

    patients = sorted({s.patient for s in slides})
    if len(patients) < k:
        raise ManifestError(f"{len(patients)} patients cannot make {k} patient-level folds")
    groups = [s.patient for s in slides]
    split = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(slides)), groups=groups)
    return [np.sort(test) for _, test in split]
