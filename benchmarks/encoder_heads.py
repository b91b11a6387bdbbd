"""Pretrained-encoder costs on this machine; prints JSON.

1. ``throughput``: random-initialised ViT-S/16, ViT-B/16 and ViT-L/16 (timm layout, loaded through
   ``load_encoder``), each in its own process: embeddings per second of 224 px patches (batch 32, after
   a warm-up batch) and the process's peak RSS.
2. ``her2st`` (with ``--data``): with a random ViT-S/16 file, the time to cut and embed every spot of
   each HER2ST section (features cached; a second pass reads the cache), the time to fit the ridge
   head (HEST protocol) and the MLP head on all four sections, and leave-one-section-out mean r of
   the ridge head (random features: a floor, not a model to use).

    python benchmarks/encoder_heads.py [--data HER2ST_DIR] [--device cpu] [--out benchmark-output/encoders]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARCHS = {"vit-s16": dict(dim=384, depth=12, heads=6, hidden=1536),
         "vit-b16": dict(dim=768, depth=12, heads=12, hidden=3072),
         "vit-l16": dict(dim=1024, depth=24, heads=16, hidden=4096)}


def write_vit(path: Path, arch: str, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    from napari_histoexpr.models.vit import ViT, ViTSpec

    if not path.exists():
        torch.manual_seed(seed)
        net = ViT(ViTSpec(patch=16, img=224, layerscale=arch == "vit-l16", **ARCHS[arch]))
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def one(arch: str, out: Path, device: str, n: int) -> dict:
    import resource

    import torch

    from napari_histoexpr.models.encoder_files import load_encoder

    enc = load_encoder(write_vit(out / f"{arch}.safetensors", arch), device=device)
    x = torch.rand(32, 3, 224, 224, device=device)
    with torch.inference_mode():
        enc.embed(x[:8])
        t = time.perf_counter()
        done = 0
        while done < n:
            enc.embed(x)
            done += len(x)
        dt = time.perf_counter() - t
    return {"arch": arch, "dim": enc.dim, "patches_per_s": round(done / dt, 2), "patches": done,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": torch.get_num_threads()}


def her2st(data: Path, out: Path, device: str) -> dict:
    import torch

    from napari_histoexpr.data.section_data import prepare_section
    from napari_histoexpr.encoders.heads import fit_mlp_head, fit_ridge_head
    from napari_histoexpr.infer.feature_cache import spot_features_steps
    from napari_histoexpr.io.manifest import Section
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.models.encoder_files import load_encoder
    from napari_histoexpr.steps import drain
    from napari_histoexpr.train.expression_trainer import choose_genes

    enc = load_encoder(write_vit(out / "vit-s16.safetensors", "vit-s16"), device=device)
    dev = torch.device(device)
    secs, feats, timings = [], [], {}
    for s in ("C2", "C3", "C4", "C5"):
        sec = Section(section=s, patient="C", image=data / "images" / f"{s}.jpg",
                      spots=data / "spots" / f"{s}_selection.tsv", counts=data / "counts" / f"{s}.tsv.gz")
        t = time.perf_counter()
        pyr, ad = load_section(sec)
        sd = prepare_section(s, pyr, ad, enc.kind.window_um, enc.kind.px)
        t_cut = time.perf_counter() - t
        t = time.perf_counter()
        f = drain(spot_features_steps(enc, s, sd.patches, sd.xy, out / "cache", dev))
        t_embed = time.perf_counter() - t
        t = time.perf_counter()
        drain(spot_features_steps(enc, s, sd.patches, sd.xy, out / "cache", dev))
        timings[s] = {"spots": len(sd), "open_and_cut_s": round(t_cut, 2), "embed_s": round(t_embed, 2),
                      "cached_read_s": round(time.perf_counter() - t, 3)}
        secs.append(sd)
        feats.append(f)
        pyr.close()
    from dataclasses import replace

    common = set.intersection(*(set(s.genes) for s in secs))
    shared = [g for g in secs[0].genes if g in common]
    secs = [replace(s, expr=s.select(shared), genes=shared) for s in secs]
    genes, _, _ = choose_genes(secs, 250, 0, 1.0)
    Y = [s.select(genes) for s in secs]
    F, Yall = np.concatenate(feats), np.concatenate(Y)
    mean, std = Yall.mean(0), Yall.std(0) + 1e-6
    groups = np.concatenate([[i] * len(s) for i, s in enumerate(secs)])
    t = time.perf_counter()
    _, info = fit_ridge_head(F, (Yall - mean) / std, groups)
    t_ridge = time.perf_counter() - t
    t = time.perf_counter()
    fit_mlp_head(F, (Yall - mean) / std, groups)
    t_mlp = time.perf_counter() - t
    loso = {}
    for i, s in enumerate(secs):
        tr = groups != i
        m, sdv = Yall[tr].mean(0), Yall[tr].std(0) + 1e-6
        state, _ = fit_ridge_head(F[tr], (Yall[tr] - m) / sdv, groups[tr])
        W, b = state["weight"].numpy().T, state["bias"].numpy()
        pred = (F[~tr] @ W + b) * sdv + m
        loso[s.name] = round(float(np.nanmean(pearson_columns(pred, Yall[~tr]))), 4)
    return {"encoder": "random ViT-S/16 (timm layout)", "sections": timings, "genes": len(genes),
            "spots": int(len(F)), "ridge_fit_s_4_sections": round(t_ridge, 2), "ridge_alpha": info["alpha"],
            "mlp_fit_s_4_sections": round(t_mlp, 2), "loso_mean_r_ridge_random_vit_s": loso,
            "loso_mean_r_ridge_random_vit_s_mean": round(float(np.mean(list(loso.values()))), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="HER2ST data folder (images/, spots/, counts/)")
    ap.add_argument("--out", default="benchmark-output/encoders")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--patches", type=int, default=64, help="patches timed per architecture")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(one(args.one, out, args.device, args.patches)))
        return 0
    res = {"benchmark": "encoder_heads", "device": args.device, "throughput": []}
    for arch in ARCHS:
        p = subprocess.run([sys.executable, __file__, "--one", arch, "--out", str(out), "--device", args.device,
                            "--patches", str(args.patches)], capture_output=True, text=True, check=True)
        res["throughput"].append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(res["throughput"][-1]), file=sys.stderr)
    if args.data:
        res["her2st"] = her2st(Path(args.data), out, args.device)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
