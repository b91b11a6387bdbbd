"""Many slides on dask.distributed: one task per slide, one worker per GPU (or one CPU worker)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import HistoExprError
from ..files import atomic_write_h5ad, atomic_write_json
from ..io.sections import open_section
from ..metrics import summarise_pearson
from ..models.artifact import load_artifact
from ..steps import drain
from .slide import predict_slide_steps
from .spot_prediction import predict_at_spots


def tile_progress(progress: Callable[[str], None] | None, label: str = "") -> Callable[[dict], None] | None:
    """An event handler printing every 10 % of a tile job and every message, each behind ``label``."""
    if progress is None:
        return None
    last = [-1]

    def show(ev: dict) -> None:
        if ev.get("stage") == "tile":
            pct = int(100 * ev["done"] / max(1, ev["total"]))
            if pct // 10 != last[0]:
                last[0] = pct // 10
                progress(f"{label}{ev['done']}/{ev['total']} tiles ({pct} %)")
        elif "msg" in ev:
            progress(f"{'WARNING: ' if ev.get('stage') == 'warning' else ''}{label}{ev['msg']}")

    return show


def _expression_model(model, device: str):
    """``model`` itself if it is a loaded model, else the model in folder ``model`` on ``device``
    (on a dask worker: its own GPU)."""
    from ..models.expression import ExpressionModel
    from ..models.runtime import worker_device

    return model if hasattr(model, "predict") else ExpressionModel.load(model, worker_device(device))


def predict_one(model_dir, slide, out_dir, device: str = "auto", progress=None, **kw) -> dict:
    """Predict one slide in this process (a dask task or a plain call); ``model_dir`` may be a
    loaded model."""

    model = _expression_model(model_dir, device)
    return drain(predict_slide_steps(model, slide, out_dir, **kw), tile_progress(progress, f"{Path(slide).name}: "))


def _task(model_dir, slide, out_dir, device, kw: dict) -> dict:
    """A dask task (keyword names such as ``workers`` would clash with ``Client.submit``).

    Inside a worker, dask would send the slide's own (lazy) reads to the cluster; they are local
    file reads, so they run on this worker's threads."""
    import dask

    with dask.config.set(scheduler="threads"):
        return predict_one(model_dir, slide, out_dir, device, None, **kw)


def spot_report(model_dir, slide, spots, out_dir, device: str = "auto", mode: str = "dense",
                precision: str = "auto", uncertainty: bool = True) -> dict:
    """Predict at the measured spots of one slide; Pearson r per gene; writes spots_prediction.h5ad
    (``X`` predicted, ``layers["measured"]``, a calibrated model's ``layers["uncertainty"]``, the spot
    size in ``uns["histoexpr"]``) and spots_report.json (``precision``: of dense mode, see
    :mod:`..models.quantize`).
    ``model_dir`` may be a loaded model (e.g. the one that just predicted the slide: its int8 bodies
    are already calibrated on it)."""
    import anndata as ad
    import pandas as pd


    model = _expression_model(model_dir, device)
    model.set_precision(precision, mode)
    if model.trust is not None:  # a calibrated model: each spot's uncertainty too (a copy: same int8 bodies)
        model = model.with_uncertainty(uncertainty)
    pyr, adata = open_section(slide, spots)
    sp = predict_at_spots(model, pyr, adata, Path(slide).stem, mode=mode)
    per = sp.pearson_by_gene()
    summary, _ = summarise_pearson({sp.section: per}, sp.genes, model.meta.get("hvg50"))
    out = ad.AnnData(X=sp.pred.astype(np.float32), obs=pd.DataFrame(index=sp.spot_ids),
                     var=pd.DataFrame(index=sp.genes), layers={"measured": sp.meas})
    out.obsm["spatial"] = sp.xy
    if sp.uncertainty is not None:
        out.layers["uncertainty"] = sp.uncertainty.astype(np.float32)
    out.uns["histoexpr"] = {"spot_diameter_px": float(sp.spot_um or 0) / pyr.world_mpp, "square": bool(sp.square),
                            "scale": sp.scale, "world_mpp": float(pyr.world_mpp)}
    atomic_write_h5ad(Path(out_dir) / "spots_prediction.h5ad", out)
    rep = {"n_spots": len(sp.spot_ids), "mode": sp.mode, "precision": precision if sp.mode == "dense" else "auto",
           "scale": sp.scale, "pearson": per, "summary": summary,
           "uncertainty_error_spearman": sp.uncertainty_error_spearman()}
    atomic_write_json(Path(out_dir) / "spots_report.json", rep)
    return rep


def predict_many(model_dir, slides: list, out, scheduler: str | None = None, device: str = "auto",
                 spots=None, progress: Callable[[str], None] | None = None, scores=None, **kw) -> dict:
    """Predict ``slides``: one slide in-process; several on a dask.distributed cluster.

    ``scheduler``: the address of an existing cluster; without it a ``LocalCluster`` is started
    with one single-threaded worker process per GPU (one when there is none). ``scores``: gene sets
    (:class:`~napari_histoexpr.data.gene_sets.GeneSet`) scored on every output (see
    :mod:`.set_scores`). Returns ``{slide: summary}``.
    """

    load_artifact(model_dir, kind="expression")  # fail fast on a bad model
    slides = [str(s) for s in ([slides] if isinstance(slides, (str, os.PathLike)) else slides)]
    for s in slides:
        if not Path(s).exists():
            from ..errors import SlideOpenError

            raise SlideOpenError(f"slide not found: {s}")
    if spots and len(slides) != 1:
        raise HistoExprError("--spots goes with exactly one --slide")
    out = Path(out)
    outs = {s: (out if len(slides) == 1 else out / name) for s, name in zip(slides, _unique_names(slides))}
    model = model_dir
    if len(slides) == 1 and scheduler is None:  # one model for the slide and its spots (one int8 calibration)
        model = _expression_model(model_dir, device)
        res = {slides[0]: predict_one(model, slides[0], outs[slides[0]], device, progress, **kw)}
    else:
        res = _on_cluster(model_dir, slides, outs, scheduler, device, progress, kw)
    if spots:
        if progress:
            progress("predicting at the measured spots")
        res[slides[0]]["spots"] = spot_report(model, slides[0], spots, outs[slides[0]], device,
                                              kw.get("mode", "dense"), kw.get("precision", "auto"),
                                              kw.get("uncertainty", True))["summary"]
    if scores:
        from .set_scores import reference_means, score_prediction

        means = reference_means(model)
        for sl in slides:
            if progress:
                progress(f"scoring {len(scores)} gene set(s) on {Path(sl).name}")
            res[sl]["scores"] = score_prediction(outs[sl], scores, means)
    (out / "predict.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def _unique_names(slides: list[str]) -> list[str]:
    """Output folder names: the slide's stem, with parent folders added until they are unique."""
    parts = [Path(s).resolve().with_suffix("").parts for s in slides]
    depth = 1
    while True:
        names = ["_".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names if len(set(names)) == len(names) else [f"{i}_{n}" for i, n in enumerate(names)]
        depth += 1


def _on_cluster(model_dir, slides, outs, scheduler, device, progress, kw) -> dict:
    jobs = {s: (str(model_dir), s, str(outs[s]), device, dict(kw)) for s in slides}
    return run_on_cluster(_task, jobs, scheduler, device, progress,
                          lambda s, r: f"{Path(s).name}: done ({r['patches']} patches)")


def run_on_cluster(task, jobs: dict, scheduler: str | None, device: str, progress=None, done=None) -> dict:
    """``task(*args)`` for each ``key: args`` of ``jobs`` on dask.distributed; ``{key: result}``.

    ``scheduler``: an existing cluster's address; without it a ``LocalCluster`` with one
    single-threaded worker process per GPU (one when there is none)."""
    import torch
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        n = max(1, torch.cuda.device_count()) if device in ("auto", "cuda") else 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    if progress:
        progress(f"dask.distributed: {len(client.scheduler_info()['workers'])} workers, {len(jobs)} slides")
    try:
        futs = {client.submit(task, *args, pure=False): key for key, args in jobs.items()}
        res = {}
        for fut in as_completed(futs):
            key = futs[fut]
            res[key] = fut.result()
            if progress and done:
                progress(done(key, res[key]))
        return {key: res[key] for key in jobs}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
