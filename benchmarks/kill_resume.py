"""Kill -9 at random moments, then resume: whole-slide prediction and training; prints JSON.

- ``predict``: ``histoexpr predict`` on a generated slide is killed (SIGKILL) after a random delay
  in ``[0.2, 1.1] x`` the uninterrupted run's wall time, then run again (it resumes from the tiles
  already written); every level of ``prediction.zarr`` must equal the uninterrupted run's, NaNs
  included, and ``summary.json`` must say the slide is complete.
- ``train``: ``histoexpr train`` is killed during an epoch, then run with ``--resume``; it must
  finish its epochs and leave a model that loads (weights are not compared: resumed multi-threaded
  kernels may differ in the last bits).
- ``annotations``: a process autosaves a growing set of drawn regions (the annotation panel's
  ``save_regions``, one save per edit) and is killed at a random moment; the sidecar must reopen
  with ``load_regions`` and hold exactly the regions of one completed save no older than the last
  one the process reported done.

    python benchmarks/kill_resume.py [--trials 20] [--train-trials 3] [--annotation-trials 20]
                                     [--out benchmark-output/kill]
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


SAVER = """
import sys
import numpy as np
from napari_histoexpr.segment.annotations import save_regions
path = sys.argv[1]
k = 0
while True:
    k += 1
    save_regions(path, regions(k))
    print(k, flush=True)
"""


def regions(k: int) -> list[tuple[np.ndarray, str]]:
    """The regions after the ``k``-th edit: ``k`` polygons of 400 vertices (a large autosave)."""
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    return [(np.stack([1000 + 50 * i + 40 * np.cos(t), 2000 + 30 * i + 40 * np.sin(t)], 1), f"class{i % 7}")
            for i in range(k)]


def annotation_trial(d: Path, delay: float) -> dict:
    """Kill an autosaving process after ``delay`` s; check what reopens from its sidecar."""
    import inspect

    from napari_histoexpr.segment.annotations import load_regions

    d.mkdir(parents=True, exist_ok=True)
    path = d / "slide.tif.histoexpr.geojson"
    path.unlink(missing_ok=True)
    code = "import numpy as np\n" + inspect.getsource(regions) + SAVER
    log = open(d / "saved.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=log, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    done = [int(x) for x in (d / "saved.txt").read_text().split()]
    last_acked = done[-1] if done else 0
    got, ok = None, False
    try:
        got = load_regions(path) if path.exists() else []
        k = len(got)
        want = regions(k)
        ok = k >= last_acked and k <= last_acked + 1 and all(
            r.cls == wc and np.allclose(r.exterior, wp) for r, (wp, wc) in zip(got, want))
    except Exception as e:  # noqa: BLE001 - any failure to reopen is what this trial looks for
        got = repr(e)
    leftovers = sorted(p.name for p in d.glob(".*.part"))
    return {"kill_after_s": round(delay, 3), "saves_acknowledged": last_acked,
            "regions_reopened": len(got) if isinstance(got, list) else got, "intact": bool(ok),
            "temp_files_left": len(leftovers)}


def levels(out: Path) -> dict[str, np.ndarray]:
    """Every array of the output store (pyramid levels and the tile-completion mask)."""
    import zarr

    g = zarr.open_group(str(out / "prediction.zarr"), mode="r")
    return {k: np.asarray(g[k]) for k in g.array_keys()}


def main(argv=None) -> int:
    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.io.manifest import Section, write_manifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--train-trials", type=int, default=3)
    ap.add_argument("--annotation-trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmark-output/kill")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ann_trials = []
    for t in range(args.annotation_trials):
        ann_trials.append({"trial": t, **annotation_trial(out / f"ann{t}", float(rng.uniform(1.0, 4.0)))})
        print(json.dumps(ann_trials[-1]), file=sys.stderr, flush=True)
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
                     "failures": [t for t in train_trials if not t["finished_and_loads"]]},
           "annotations": {"trials": len(ann_trials), "intact": sum(t["intact"] for t in ann_trials),
                           "saves_acknowledged_median": float(np.median([t["saves_acknowledged"]
                                                                         for t in ann_trials] or [0])),
                           "failures": [t for t in ann_trials if not t["intact"]]}}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if not any(res[k]["failures"] for k in ("predict", "train", "annotations")) else 1


if __name__ == "__main__":
    sys.exit(main())
