"""Kill -9 at random moments, then resume: whole-slide prediction and training; prints JSON.

- ``predict``: ``histoexpr predict`` on a generated slide is killed (SIGKILL) after a random delay
  in ``[0.2, 1.1] x`` the uninterrupted run's wall time, then run again (it resumes from the tiles
  already written); every level of ``prediction.zarr`` must equal the uninterrupted run's, NaNs
  included, and ``summary.json`` must say the slide is complete.
- ``train``: ``histoexpr train`` is killed during an epoch, then run with ``--resume``; it must
  finish its epochs and leave a model that loads (weights are not compared: resumed multi-threaded
  kernels may differ in the last bits).

    python benchmarks/kill_resume.py [--trials 20] [--train-trials 3] [--out benchmark-output/kill]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = [str(Path(sys.executable).parent / "histoexpr")]  # the console script of this environment


def run(args: list[str], kill_after: float | None = None) -> tuple[int | None, float]:
    """Run the CLI; with ``kill_after`` send SIGKILL after that many seconds (``None`` rc if killed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        return proc.wait(), time.perf_counter() - t0
    try:
        rc = proc.wait(timeout=kill_after)
        return rc, time.perf_counter() - t0  # finished before the kill
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, time.perf_counter() - t0


def levels(out: Path) -> dict[str, np.ndarray]:
    """Every array of the output store (pyramid levels and the tile-completion mask)."""
    import zarr

    g = zarr.open_group(str(out / "prediction.zarr"), mode="r")
    return {k: np.asarray(g[k]) for k in g.array_keys()}


def main(argv=None) -> int:
    from napari_histoexpr.data.synthetic import make_demo
    from napari_histoexpr.io.manifest import Section, write_manifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--train-trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmark-output/kill")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo = make_demo(out / "demo", size=3072, mpp=1.0, seed=7)
    train = make_demo(out / "train", size=1536, mpp=1.0, seed=8)
    man = write_manifest(out / "train.csv", [Section("t", "p", train.slide, train.spots)])
    model = out / "model"
    base_train = ["train", "--manifest", str(man), "--gene-list", "ERBB2,COL1A1,PTPRC,KRT8", "--aux-genes", "0",
                  "--window-um", "100", "--px", "64", "--device", "cpu", "--no-baselines"]
    if not (model / "model.json").exists():
        rc, _ = run(base_train + ["--out", str(model), "--epochs", "2"])
        assert rc == 0, "training the model failed"
    pred = ["predict", "--model", str(model), "--slide", str(demo.slide), "--device", "cpu"]
    ref_dir = out / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    rc, t_ref = run(pred + ["--out", str(ref_dir)])
    assert rc == 0, "the uninterrupted prediction failed"
    ref = levels(ref_dir)
    trials = []
    for t in range(args.trials):
        d = out / f"trial{t}"
        shutil.rmtree(d, ignore_errors=True)
        delay = float(rng.uniform(0.2, 1.1)) * t_ref
        rc1, _ = run(pred + ["--out", str(d)], kill_after=delay)
        rc2, _ = run(pred + ["--out", str(d)])
        got = levels(d) if rc2 == 0 else {}
        same = rc2 == 0 and set(got) == set(ref) and all(
            got[k].shape == ref[k].shape and np.array_equal(got[k], ref[k], equal_nan=True) for k in ref)
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        trials.append({"trial": t, "kill_after_s": round(delay, 2), "killed": rc1 is None, "resume_rc": rc2,
                       "identical": bool(same), "summary_complete": bool(summary)})
        print(json.dumps(trials[-1]), file=sys.stderr, flush=True)
    train_trials = []
    _, t_train = run(base_train + ["--out", str(out / "train_ref"), "--epochs", "3"])
    for t in range(args.train_trials):
        d = out / f"train{t}"
        shutil.rmtree(d, ignore_errors=True)
        delay = float(rng.uniform(0.3, 0.9)) * t_train
        rc1, _ = run(base_train + ["--out", str(d), "--epochs", "3"], kill_after=delay)
        rc2, _ = run(base_train + ["--out", str(d), "--epochs", "3", "--resume"])
        ok = rc2 == 0
        if ok:
            from napari_histoexpr.models.expression import ExpressionModel

            m = ExpressionModel.load(d, "cpu")
            ok = m.meta["metrics"]["epoch"] == 2
        train_trials.append({"trial": t, "kill_after_s": round(delay, 2), "killed": rc1 is None,
                             "resume_rc": rc2, "finished_and_loads": bool(ok)})
        print(json.dumps(train_trials[-1]), file=sys.stderr, flush=True)
    res = {"benchmark": "kill_resume", "reference_predict_s": round(t_ref, 2),
           "predict": {"trials": len(trials), "killed_mid_run": sum(t["killed"] for t in trials),
                       "identical_after_resume": sum(t["identical"] for t in trials),
                       "failures": [t for t in trials if not t["identical"]]},
           "train": {"trials": len(train_trials), "killed_mid_run": sum(t["killed"] for t in train_trials),
                     "resumed_and_loads": sum(t["finished_and_loads"] for t in train_trials),
                     "failures": [t for t in train_trials if not t["finished_and_loads"]]}}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if not res["predict"]["failures"] and not res["train"]["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
