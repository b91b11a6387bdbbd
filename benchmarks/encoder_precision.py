"""Which precision an encoder's frozen features may run in on this machine; prints JSON.

For random-initialised encoders in their published layouts (ViT-S/16 and ViT-B/16 in timm's layout,
ResNet-50 in torchvision's), loaded through ``load_encoder``: the embeddings of every HER2ST C2–C5 spot
(224 px for 112 µm, as the encoders expect) in fp32, in bf16 autocast (what the product uses on CUDA and
on a CPU with native bf16), and in int8 (dynamic quantisation of the linear layers: ViTs only). A ridge
head (HEST protocol) is fitted on the fp32 features of all four sections; each precision's features go
through that head, and the maps are compared with the fp32 maps: Pearson r over the spots of a
section, per gene, its median over genes (the bar: >= 0.99) and its 5th percentile, per section. Also
the patches per second of each precision (batch 32, after a warm-up).

    python benchmarks/encoder_precision.py --data HER2ST_DIR [--out benchmark-output/precision]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from encoder_heads import write_vit  # noqa: E402

SECTIONS = ("C2", "C3", "C4", "C5")


def write_resnet50(path: Path, seed: int = 0) -> Path:
    import torch

    from napari_histoexpr.models.backbones import build_backbone

    if not path.exists():
        torch.manual_seed(seed)
        torch.save(build_backbone("resnet50").state_dict(), path)
    return path


def int8(net):
    import torch
    from torch import nn

    with warnings.catch_warnings():  # torch.ao's dynamic quantisation, deprecated but present in this torch
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)


def embed(enc, net, patches: np.ndarray, bf16: bool, batch: int = 32) -> np.ndarray:
    import torch

    from napari_histoexpr.models.runtime import to_tensor

    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(patches), batch):
            out.append(net(enc.normalise(to_tensor(patches[i:i + batch]))).float().numpy())
    return np.concatenate(out)


def rate(enc, net, bf16: bool, n: int = 96) -> float:
    x = (np.random.default_rng(0).random((32, 224, 224, 3)) * 255).astype(np.uint8)
    embed(enc, net, x[:8], bf16)
    t = time.perf_counter()
    for _ in range(n // 32):
        embed(enc, net, x, bf16)
    return round(n // 32 * 32 / (time.perf_counter() - t), 2)


def main(argv=None) -> int:
    import torch

    from napari_histoexpr.data.section_data import prepare_section
    from napari_histoexpr.encoders.heads import fit_ridge_head
    from napari_histoexpr.io.manifest import Section
    from napari_histoexpr.io.sections import load_section
    from napari_histoexpr.metrics import pearson_columns
    from napari_histoexpr.models.catalog import cpu_has_bf16
    from napari_histoexpr.models.encoder_files import load_encoder
    from napari_histoexpr.train.expression_trainer import choose_genes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="HER2ST data folder (images/, spots/, counts/)")
    ap.add_argument("--out", default="benchmark-output/precision")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"vit-s16": write_vit(out / "vit-s16.safetensors", "vit-s16"),
             "vit-b16": write_vit(out / "vit-b16.safetensors", "vit-b16"),
             "resnet50": write_resnet50(out / "resnet50.pth")}
    secs = []
    for s in SECTIONS:
        sec = Section(section=s, patient="C", image=data / "images" / f"{s}.jpg",
                      spots=data / "spots" / f"{s}_selection.tsv", counts=data / "counts" / f"{s}.tsv.gz")
        pyr, ad = load_section(sec)
        secs.append(prepare_section(s, pyr, ad, 112.0, 224))
        pyr.close()
    from dataclasses import replace

    common = set.intersection(*(set(s.genes) for s in secs))
    shared = [g for g in secs[0].genes if g in common]
    secs = [replace(s, expr=s.select(shared), genes=shared) for s in secs]
    genes, _, _ = choose_genes(secs, 250, 0, 1.0)
    Y = np.concatenate([s.select(genes) for s in secs])
    Y = (Y - Y.mean(0)) / (Y.std(0) + 1e-6)
    groups = np.concatenate([[i] * len(s) for i, s in enumerate(secs)])
    bounds = np.cumsum([0] + [len(s) for s in secs])
    result = {"benchmark": "encoder_precision", "threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_bf16(),
              "spots": int(len(Y)), "genes": len(genes), "encoders": {}}
    for name, path in files.items():
        enc = load_encoder(path, device="cpu")
        nets = {"fp32": (enc.net, False), "bf16": (enc.net, True)}
        if enc.kind.layout == "timm-vit":
            nets["int8"] = (int8(enc.net), False)
        feats = {p: np.concatenate([embed(enc, n, s.patches, bf) for s in secs]) for p, (n, bf) in nets.items()}
        state, _ = fit_ridge_head(feats["fp32"], Y, groups)
        W, b = state["weight"].numpy().T, state["bias"].numpy()
        maps = {p: f @ W + b for p, f in feats.items()}
        res = {"encoder": enc.kind.name, "dim": enc.dim}
        for p in nets:
            per = {}
            for i, s in enumerate(secs):
                lo, hi = bounds[i], bounds[i + 1]
                r = np.nan_to_num(pearson_columns(maps[p][lo:hi], maps["fp32"][lo:hi]))
                per[s.name] = {"median_r": round(float(np.median(r)), 5), "p5_r": round(float(np.percentile(r, 5)), 5)}
            cos = np.sum(feats[p] * feats["fp32"], 1) / (np.linalg.norm(feats[p], axis=1)
                                                          * np.linalg.norm(feats["fp32"], axis=1) + 1e-12)
            res[p] = {"patches_per_s": rate(enc, *nets[p]), "maps_vs_fp32": per,
                      "min_median_r": min(v["median_r"] for v in per.values()),
                      "feature_cosine_median": round(float(np.median(cos)), 5)}
        result["encoders"][name] = res
        print(json.dumps({name: res}), file=sys.stderr, flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
