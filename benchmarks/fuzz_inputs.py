"""Fuzz the readers and the model loader with mutated real files; prints JSON.

Seeds (all generated here): a pyramidal JPEG TIFF slide, Space Ranger folders (HDF5 + CSV positions,
MTX + parquet positions), an ``.h5ad``, a legacy ST selection + counts pair, an ST pipeline folder
and an expression model folder. Each trial copies one seed, applies one mutation — truncation, bit
flips, a JSON value of the wrong type, NaN/inf coordinates, duplicated barcodes, gene names with odd
characters — and opens it the way the reader / ``histoexpr info`` / model loading does. An outcome
is *ok* (opened), *named* (a :class:`~napari_histoexpr.errors.HistoExprError` subclass, what users
see as a one-line error) or a **failure**: any other exception, a hang (over ``--timeout`` s) or a
crash of the process (trials run in a child process that is restarted after a crash).

    python benchmarks/fuzz_inputs.py [--trials 500] [--seed 0] [--out benchmark-output/fuzz]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

KINDS = ("slide", "visium_h5", "visium_mtx", "h5ad", "st_pair", "st_folder", "model")


def make_seeds(base: Path) -> dict[str, Path]:
    """Write every seed input once (reused when present)."""
    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.io.spots import read_spots

    base.mkdir(parents=True, exist_ok=True)
    seeds = {}
    d = make_demo(base / "sr2", size=768, mpp=1.0, seed=3)
    seeds["slide"], seeds["visium_h5"] = d.slide, d.spots
    seeds["visium_mtx"] = make_demo(base / "mtx", size=768, mpp=1.0, seed=4, layout="mtx").spots
    if not (base / "spots.h5ad").exists():
        read_spots(d.spots).write_h5ad(base / "spots.h5ad")
    seeds["h5ad"] = base / "spots.h5ad"
    st = base / "st_pair"
    st.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(2, 12), np.arange(2, 12))
    ids = [f"{x}x{y}" for x, y in zip(xs.ravel(), ys.ravel())]
    counts = rng.poisson(4, (len(ids), 6))
    genes = ["ERBB2", "ACTB", "GAPDH", "KRT8", "COL1A1", "PTPRC"]
    with open(st / "S1.tsv", "w") as f:
        f.write("\t" + "\t".join(genes) + "\n")
        for i, c in zip(ids, counts):
            f.write(i + "\t" + "\t".join(map(str, c)) + "\n")
    with open(st / "S1_selection.tsv", "w") as f:
        f.write("x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n")
        for x, y in zip(xs.ravel(), ys.ravel()):
            f.write(f"{x}\t{y}\t{x}\t{y}\t{(x - 1) * 40.0}\t{(y - 1) * 40.0}\t1\n")
    seeds["st_pair"] = st
    stf = base / "st_folder"
    stf.mkdir(exist_ok=True)
    shutil.copy(st / "S1.tsv", stf / "sample_stdata.tsv")
    from PIL import Image

    Image.fromarray(np.full((700, 660, 3), 220, np.uint8)).save(stf / "HE.jpg")
    seeds["st_folder"] = stf
    seeds["model"] = _tiny_model(base / "model", base / "sr2")
    return seeds


def _tiny_model(out: Path, demo: Path) -> Path:
    if (out / "model.json").exists():
        return out
    from napari_histoexpr.io.manifest import Section, write_manifest
    from napari_histoexpr.steps import drain
    from napari_histoexpr.train.expression_trainer import TrainConfig, train_from_manifest_steps

    man = write_manifest(out.parent / "m.csv", [Section("s", "p", demo / "slide.tif", demo / "outs")])
    cfg = TrainConfig(genes=["ERBB2", "COL1A1"], max_aux=0, window_um=100, px=32, epochs=1, device="cpu",
                      baselines=False)
    drain(train_from_manifest_steps(man, out, cfg))
    return out


# ------------------------------------------------------------------------------------------------
# mutations
# ------------------------------------------------------------------------------------------------
def _files(root: Path) -> list[Path]:
    return sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())


def mutate(root: Path, rng) -> str:
    """Apply one random mutation to a file under ``root``; returns what was done."""
    files = _files(root)
    f = files[int(rng.integers(len(files)))]
    data = f.read_bytes()
    text_like = f.suffix in (".csv", ".tsv", ".json", ".txt")
    kind = rng.choice(["truncate", "bitflip", "json_type", "nan_coords", "dup_ids", "odd_genes"]
                      if text_like else ["truncate", "bitflip"])
    if kind == "truncate":
        f.write_bytes(data[: int(rng.integers(0, max(1, len(data))))])
    elif kind == "bitflip":
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 16))):
            if b:
                i = int(rng.integers(len(b)))
                b[i] ^= 1 << int(rng.integers(8))
        f.write_bytes(bytes(b))
    elif kind == "json_type" and f.suffix == ".json":
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj:
            k = list(obj)[int(rng.integers(len(obj)))]
            obj[k] = [None, "text", [1, 2], {"a": 1}, -1, 0, float("nan")][int(rng.integers(7))]
            f.write_text(json.dumps(obj))
        else:
            f.write_text("[1, 2, 3]")
    else:  # text tables: coordinates, ids, gene names
        lines = data.decode("utf-8", "replace").splitlines()
        if len(lines) > 2:
            sep = "\t" if f.suffix == ".tsv" else ","
            i = int(rng.integers(1, len(lines)))
            cells = lines[i].split(sep)
            if kind == "nan_coords" and len(cells) > 2:
                cells[int(rng.integers(1, len(cells)))] = ["nan", "inf", "-inf", "1e309", ""][int(rng.integers(5))]
                lines[i] = sep.join(cells)
            elif kind == "dup_ids":
                lines[i] = sep.join([lines[1].split(sep)[0]] + cells[1:])
            else:  # odd characters in a header name or an id
                head = lines[0].split(sep)
                j = int(rng.integers(len(head)))
                head[j] = head[j] + ["\t", "\"", "é\u200b", "\x00", ",", " "][int(rng.integers(6))]
                lines[0] = sep.join(head)
        f.write_text("\n".join(lines) + "\n")
    return f"{kind} {f.relative_to(root.parent) if root.is_dir() else f.name}"


def open_kind(kind: str, path: Path) -> None:
    """Open ``path`` as the reader / CLI would."""
    from napari_histoexpr.io.sections import open_section

    if kind == "slide":
        from napari_histoexpr.io.slides import open_slide

        pyr = open_slide(path)
        pyr.read_region(0, 0, 256, 256, level=pyr.n_levels - 1)
    elif kind == "model":
        from napari_histoexpr.models.expression import ExpressionModel

        ExpressionModel.load(path, "cpu")
    elif kind == "st_pair":
        open_section(None, path / "S1_selection.tsv", path / "S1.tsv")
    elif kind == "h5ad":
        open_section(None, path)
    else:
        open_section(None, path)


# ------------------------------------------------------------------------------------------------
def child(args) -> int:
    """Run trials ``start..`` and append one JSON line per trial to ``args.log``."""
    import warnings

    from napari_histoexpr.errors import HistoExprError

    warnings.simplefilter("ignore")
    seeds = json.loads(Path(args.seeds).read_text())
    work = Path(args.out) / "work"

    def alarm(*_):
        raise TimeoutError("hang")

    signal.signal(signal.SIGALRM, alarm)
    with open(args.log, "a") as log:
        for t in range(args.start, args.trials):
            rng = np.random.default_rng([args.seed, t])
            kind = KINDS[t % len(KINDS)]
            src = Path(seeds[kind])
            dst = work / f"t{t}" / src.name
            shutil.rmtree(dst.parent, ignore_errors=True)
            dst.parent.mkdir(parents=True)
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
            what = mutate(dst, rng)
            log.write(json.dumps({"trial": t, "kind": kind, "mutation": what, "outcome": "started"}) + "\n")
            log.flush()
            signal.alarm(args.timeout)
            try:
                open_kind(kind, dst)
                outcome, err = "ok", None
            except HistoExprError as e:
                outcome, err = "named", f"{type(e).__name__}: {e}"[:300]
            except TimeoutError:
                outcome, err = "hang", "timeout"
            except Exception as e:  # noqa: BLE001 - the point: anything not named is a failure
                outcome = "failure"
                err = "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
            finally:
                signal.alarm(0)
            log.write(json.dumps({"trial": t, "kind": kind, "mutation": what, "outcome": outcome,
                                  "error": err}) + "\n")
            log.flush()
            shutil.rmtree(dst.parent, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=60, help="seconds before a trial counts as a hang")
    ap.add_argument("--out", default="benchmark-output/fuzz")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seeds", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--log", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = {k: str(v) for k, v in make_seeds(out / "seeds").items()}
    (out / "seeds.json").write_text(json.dumps(seeds))
    log = out / "trials.jsonl"
    log.unlink(missing_ok=True)
    start, crashes = 0, []
    while start < args.trials:
        subprocess.run([sys.executable, __file__, "--child", "--start", str(start), "--trials", str(args.trials),
                        "--seed", str(args.seed), "--timeout", str(args.timeout), "--out", str(out),
                        "--seeds", str(out / "seeds.json"), "--log", str(log)], env=dict(os.environ))
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        done = {r["trial"] for r in rows if r["outcome"] != "started"}
        started = [r for r in rows if r["outcome"] == "started" and r["trial"] not in done]
        if started:  # the child died inside this trial: a crash
            crashes.append(started[-1] | {"outcome": "crash"})
            with open(log, "a") as f:
                f.write(json.dumps(crashes[-1]) + "\n")
        start = max([r["trial"] for r in rows], default=-1) + 1
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    final = {r["trial"]: r for r in rows if r["outcome"] != "started"}
    outcomes = [r["outcome"] for r in final.values()]
    res = {"benchmark": "fuzz_inputs", "trials": len(final), "seed": args.seed,
           "by_outcome": {k: outcomes.count(k) for k in ("ok", "named", "failure", "hang", "crash")},
           "by_kind": {k: {o: sum(1 for r in final.values() if r["kind"] == k and r["outcome"] == o)
                           for o in ("ok", "named", "failure", "hang", "crash")} for k in KINDS},
           "failures": [r for r in final.values() if r["outcome"] in ("failure", "hang", "crash")][:50]}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if not res["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
