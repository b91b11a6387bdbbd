"""Training the transcriptome-supervised morphology segmenter.

Two routes (``SegConfig.features``):

* ``"expression"`` (default) — the seed study's idea: morphology features supervised by the
  transcriptome, then segmentation. The backbone of an expression model (``encoder``; without one,
  an expression model is first trained on the same sections, as a user would) gets a class head:
  a class-balanced softmax regression on its frozen features (L2 strength chosen on the validation
  section, then refitted on all sections), optionally fine-tuned end to end (``finetune``).
  ``encoder`` may also be a pretrained encoder (a weights file or Hugging Face folder, see
  :mod:`napari_histoexpr.models.encoder_files`, or a model folder of a head fitted on one): the
  patches are cut at the encoder's own window and size, its frozen features come from the feature
  cache (:mod:`napari_histoexpr.infer.feature_cache`, computed once per section), and only the class
  head is fitted and saved, so retraining after a drawn region takes seconds.
* ``"scratch"`` — patch classifiers (one per patch size) trained from scratch on the spot classes
  alone; the model keeps the best by validation balanced accuracy, or the ensemble (mean of
  probabilities) when that is better.

Both save the same artifact (:class:`~napari_histoexpr.models.segmenter.Segmenter`: one
:class:`~napari_histoexpr.models.segmenter.PatchClassifier` per patch size), so dense prediction
(:mod:`napari_histoexpr.segment.maps`) and the panel do not care which route made it.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.patches import augment_batch, extract_patches, macenko_normaliser, tissue_fraction_at, tissue_mask
from ..errors import TrainingError
from ..files import atomic_write_json
from ..infer.feature_cache import default_cache, spot_features_steps
from ..io.sections import load_section
from ..models.artifact import META, load_artifact, save_artifact
from ..segment.classes import BACKGROUND, apply_regions, classes_from_clusters, spot_classes
from .expression_trainer import TrainConfig, train_from_manifest_steps
from .loop import epoch_batches, fit_epoch, pixel_stats, split_validation

FEATURES = ("expression", "scratch")


@dataclass
class SegConfig:
    classes: dict = field(default_factory=lambda: {"source": "column", "column": "cluster"})
    features: str = "expression"  # "expression" (an expression model's backbone) or "scratch"
    encoder: str | None = None  # expression model folder or pretrained encoder; None: train one here first
    encoder_name: str | None = None  # a pretrained encoder's name where its file's shapes fit several
    features_cache: str | None = None  # pretrained encoder: where features are kept (default: beside the output)
    encoder_config: dict = field(default_factory=dict)  # TrainConfig fields for that expression model
    finetune: bool = False  # expression route: also fine-tune the backbone (else frozen)
    finetune_lr: float = 1e-4
    smooth_um: float = 0.0  # spatial regularisation: class probabilities averaged over this neighbourhood (µm)
    # scratch route (and the fine-tuning epochs / batch size of the expression route)
    windows_um: tuple = (50.0, 100.0)
    px: int = 64
    backbone: str = "resnet18"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    background_fraction: float = 0.15  # background samples per labelled spot
    val_section: str | None = None
    device: str = "auto"
    seed: int = 0
    augment: bool = True


def background_points(pyr, n: int, rng, margin_px: float) -> np.ndarray:
    """``n`` level-0 ``(x, y)`` points off tissue (whole patch on glass), inside the slide."""

    mask, ds = tissue_mask(pyr)
    h, w = pyr.level0_shape
    cand = np.stack([rng.uniform(margin_px, w - margin_px, n * 20), rng.uniform(margin_px, h - margin_px, n * 20)], 1)
    frac = tissue_fraction_at(mask, ds, cand, margin_px)
    cand = cand[frac == 0]
    return cand[:n]


@dataclass
class SegSection:
    name: str
    xy: np.ndarray
    labels: np.ndarray  # class names (object)
    patches: dict  # window_um -> (N, px, px, 3)
    features: np.ndarray | None = None  # (N, dim) a pretrained encoder's frozen features, when one is used

    def subset(self, index: np.ndarray, name: str | None = None) -> "SegSection":
        return SegSection(name or self.name, self.xy[index], self.labels[index],
                          {w: p[index] for w, p in self.patches.items()},
                          None if self.features is None else self.features[index])

    def __len__(self) -> int:
        return len(self.xy)


def prepare_seg_sections(sections, cfg: SegConfig, regions: dict | None = None, stain: dict | None = None,
                         features=None) -> Generator[dict, None, list]:
    """Open sections, derive spot classes (jointly for clustering), cut patches at every window
    (Macenko-normalised to ``stain`` when the encoder was trained so). With ``features`` (a step
    function ``(section name, slide, xy) -> (N, dim)``, a pretrained encoder's), each section gets its
    features instead of patches (cut only where they are not cached)."""
    import anndata as ad


    opened = []
    for i, sec in enumerate(sections):
        yield {"stage": "open", "msg": f"opening {sec.section} ({i + 1}/{len(sections)})"}
        opened.append((sec, *load_section(sec)))
    spec = cfg.classes
    if spec["source"] == "clusters":  # cluster all sections together so labels agree
        shared = sorted(set.intersection(*[set(map(str, a.var_names)) for _, _, a in opened]))
        joint = ad.concat([a[:, shared] for _, _, a in opened], label="_section",
                          keys=[s.section for s, _, _ in opened],
                          index_unique="|")
        lab = classes_from_clusters(joint, spec["method"], spec["n_clusters"], spec["resolution"], cfg.seed)
        per = {s.section: lab[joint.obs["_section"] == s.section].to_numpy() for s, _, _ in opened}
    else:
        per = {s.section: spot_classes(a, spec).to_numpy() for s, _, a in opened}
    rng = np.random.default_rng(cfg.seed)
    transform = macenko_normaliser(stain) if stain else None
    out = []
    for sec, pyr, adata in opened:
        xy = np.asarray(adata.obsm["spatial"], float)
        labels = np.asarray(per[sec.section], dtype=object)
        if regions and sec.section in regions:
            import pandas as pd

            labels = apply_regions(pd.Series(labels), xy, regions[sec.section]).to_numpy()
        mask, mds = tissue_mask(pyr)
        keep = np.array([lab is not None and str(lab) != "nan" for lab in labels])
        keep &= tissue_fraction_at(mask, mds, xy, 25.0 / pyr.world_mpp) > 0.3
        xy, labels = xy[keep], labels[keep]
        nb = int(round(cfg.background_fraction * len(xy)))
        bg = background_points(pyr, nb, rng, max(cfg.windows_um) / 2 / pyr.world_mpp)
        xy = np.concatenate([xy, bg]) if len(bg) else xy
        labels = np.concatenate([labels, np.array([BACKGROUND] * len(bg), dtype=object)])
        yield {"stage": "patches", "msg": f"{sec.section}: {keep.sum()} labelled spots + {len(bg)} background"}
        if features is not None:
            f = yield from features(sec.section, pyr, xy)
            out.append(SegSection(sec.section, xy, labels, {}, f))
        else:
            patches = {w: extract_patches(pyr, xy, w, cfg.px, transform=transform) for w in cfg.windows_um}
            out.append(SegSection(sec.section, xy, labels, patches))
        pyr.close()
    return out


def encoder_steps(sections, out_dir, cfg: SegConfig) -> Generator[dict, None, Path]:
    """The expression model whose backbone the segmenter uses: ``cfg.encoder``, or one trained now on
    ``sections`` (all genes + aux genes of the same spots) into ``OUT/encoder`` — a normal expression
    model folder, usable in the "Predicted expression" panel too."""

    if cfg.encoder:
        return Path(cfg.encoder)
    enc = Path(out_dir) / "encoder"
    tc = TrainConfig(**{"device": cfg.device, "seed": cfg.seed, "val_section": cfg.val_section,
                        **cfg.encoder_config})
    yield {"stage": "encoder", "msg": f"no encoder given: training an expression model on the same sections "
           f"first ({tc.epochs} epochs, {tc.px} px for {tc.window_um:g} µm) -> {enc}"}
    yield from train_from_manifest_steps(sections, enc, tc)
    return enc


def pretrained_encoder(path, name: str | None = None, device="cpu"):
    """The pretrained encoder ``path`` holds or names (a weights file or Hugging Face folder, or a model
    folder of a head fitted on one), or ``None`` for an expression model folder trained here."""
    from ..models.encoder_files import load_encoder
    from ..models.encoder_net import load_encoder_of

    p = Path(path)
    if p.is_dir() and (p / META).exists():
        _, meta = load_artifact(p, kind="expression")
        return load_encoder_of(meta, str(p), device) if meta.get("encoder") else None
    return load_encoder(p, name, device)


def segmenter_steps(sections, out_dir, cfg: SegConfig, regions: dict | None = None
                    ) -> Generator[dict, None, dict]:
    """All of ``histoexpr segment train`` (and the panel's Train): the encoder when the route needs one,
    the sections' classes and patches, the segmenter. Returns the training summary."""
    from dataclasses import replace

    if cfg.features not in FEATURES:
        raise TrainingError(f"unknown segmenter features {cfg.features!r}; choose one of {', '.join(FEATURES)}")
    from ..models.runtime import resolve_device

    stain, pre = None, None
    if cfg.features == "expression":
        enc = yield from encoder_steps(sections, out_dir, cfg)
        pre = pretrained_encoder(enc, cfg.encoder_name, resolve_device(cfg.device))
        if pre is not None:
            if cfg.finetune:
                raise TrainingError(f"{pre.kind.name} is a pretrained encoder: the segmenter keeps it frozen and fits "
                                    "its class head (seconds); fine-tuning is for a backbone trained here")
            cfg = replace(cfg, encoder=str(enc), windows_um=(pre.kind.window_um,), px=pre.kind.px,
                          backbone=f"encoder:{pre.kind.name}")
        else:
            _, meta = load_artifact(enc, kind="expression")
            cfg = replace(cfg, encoder=str(enc), windows_um=(float(meta["window_um"]),), px=int(meta["input_px"]),
                          backbone=str(meta["backbone"]))
            stain = meta.get("stain_norm")
    features = None
    if pre is not None:  # frozen features, once per section: a retraining reads them and cuts no patch
        cache = Path(cfg.features_cache) if cfg.features_cache else default_cache(out_dir)

        def features(name, pyr, xy):
            return (yield from spot_features_steps(
                pre, name, lambda: extract_patches(pyr, xy, pre.kind.window_um, pre.kind.px), xy, cache,
                resolve_device(cfg.device), cfg.batch_size))
    data = yield from prepare_seg_sections(sections, cfg, regions, stain, features)
    return (yield from train_segmenter_steps(data, out_dir, cfg, pre))


def balanced_accuracy(pred: np.ndarray, true: np.ndarray, n_classes: int) -> float:
    """The mean recall over the ``n_classes`` classes present in ``true`` (scikit-learn's; 0 if none)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    true, pred = np.asarray(true), np.asarray(pred)
    keep = (true >= 0) & (true < n_classes)
    if not keep.any():
        return 0.0
    with warnings.catch_warnings():  # predicted classes absent from ``true`` are not scored
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(true[keep], pred[keep]))


def train_segmenter_steps(sections: list[SegSection], out_dir, cfg: SegConfig, pretrained=None
                          ) -> Generator[dict, None, dict]:
    """Train the segmenter of ``cfg.features`` on prepared sections (with ``pretrained``, an
    :class:`~napari_histoexpr.models.encoder_files.Encoder` whose features the sections hold, only a
    class head on them); yields events; saves the artifact; returns a summary."""
    import torch

    from ..models.runtime import resolve_device
    from ..models.segmenter import KIND

    out = Path(out_dir)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tr, va, val_name = split_validation(sections, cfg.val_section, 0.2, cfg.seed)
    classes = [BACKGROUND] + sorted({str(lab) for s in tr for lab in s.labels} - {BACKGROUND})
    if len(classes) < 2:
        raise TrainingError("need at least one tissue class besides background")
    cidx = {c: i for i, c in enumerate(classes)}
    ytr = np.concatenate([[cidx[str(lab)] for lab in s.labels] for s in tr]).astype(np.int64)
    yva = np.array([cidx.get(str(lab), -1) for s in va for lab in s.labels], np.int64)
    counts = np.bincount(ytr, minlength=len(classes)).astype(np.float32)
    yield {"stage": "data", "msg": f"{len(ytr)} training / {int((yva >= 0).sum())} validation samples, "
           f"classes {classes} (counts {counts.astype(int).tolist()})"}
    labels = Labels(ytr, yva, classes, counts.sum() / np.maximum(counts, 1) / len(classes))
    if pretrained is not None:
        nets, results, val_probs, extra = yield from _train_on_pretrained(tr, va, labels, pretrained, cfg)
    elif cfg.features == "expression":
        nets, results, val_probs, extra = yield from _train_on_encoder(tr, va, labels, cfg, device)
    else:
        nets, results, val_probs = yield from _train_from_scratch(tr, va, labels, cfg, device)
        extra = {"source": "scratch"}
    vmask = yva >= 0
    ens = np.mean([val_probs[w] for w in nets], axis=0)
    ens_acc = balanced_accuracy(ens.argmax(1)[vmask], yva[vmask], len(classes))
    best_win = max(results, key=results.get)
    mode = "ensemble" if len(nets) > 1 and ens_acc > results[best_win] else "best"
    used = list(nets) if mode == "ensemble" else [best_win]
    state = {f"w{i}.{k}": v for i, w in enumerate(used) for k, v in nets[w].state_dict().items()}
    if pretrained is not None:  # the head alone: the encoder stays in its own file
        state = {f"w0.head.{k}": v for k, v in nets[used[0]].head.state_dict().items()}
    meta = {"kind": KIND, "backbone": cfg.backbone, "classes": classes, "windows_um": used, "px": cfg.px,
            "mode": mode, "class_spec": cfg.classes, "features": extra, "smooth_um": float(cfg.smooth_um),
            "stain_norm": extra.get("stain_norm"),
            "validation": {"section": val_name, "bal_acc_by_window": {str(k): v for k, v in results.items()},
                           "bal_acc_ensemble": ens_acc},
            "training": {"sections": [s.name for s in tr], "config": {k: v for k, v in asdict(cfg).items()}}}
    if pretrained is not None:
        meta["encoder"] = {"path": str(Path(pretrained.path).resolve()), "sha256": pretrained.sha256,
                           "name": pretrained.kind.name, "dim": pretrained.dim, "tokens": pretrained.kind.tokens}
    save_artifact(out, state, meta)
    summary = {"mode": mode, "windows_um": used, "val_bal_acc": max(ens_acc, results[best_win]) if mode == "ensemble"
               else results[best_win], "classes": classes, "by_window": results, "ensemble": ens_acc,
               "features": extra, "device": str(device)}
    atomic_write_json(out / "training.json", summary)
    yield {"stage": "done", "msg": f"segmenter saved ({cfg.features} features, {mode}, windows {used} µm, "
           f"val balanced acc {summary['val_bal_acc']:.3f})"}
    return summary


@dataclass
class Labels:
    """Class indices of the training and validation samples (-1: a class unseen in training) and
    the class weights that balance the training loss."""

    train: np.ndarray
    val: np.ndarray
    classes: list
    weights: np.ndarray


def _train_from_scratch(tr, va, labels: Labels, cfg: SegConfig, device) -> Generator[dict, None, tuple]:
    """One patch classifier per window, trained from scratch on the classes; best epoch by validation
    balanced accuracy. Returns ``(nets, val_bal_acc, val_probs)`` keyed by window."""
    import torch

    from ..models.segmenter import PatchClassifier

    ytr, yva, vmask = labels.train, labels.val, labels.val >= 0
    weights = torch.tensor(labels.weights, device=device)
    nets, results, val_probs = {}, {}, {}
    steps = max(1, math.ceil(len(ytr) / cfg.batch_size))
    ytr_t = torch.from_numpy(ytr)
    for wi, win in enumerate(cfg.windows_um):
        Xtr = np.concatenate([s.patches[win] for s in tr])
        Xva = np.concatenate([s.patches[win] for s in va])
        mean, std = pixel_stats(Xtr, 100_000)
        net = PatchClassifier(cfg.backbone, len(labels.classes), tuple(mean), tuple(std)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed + wi)
        augment = (lambda x, g=gen: augment_batch(x, g)) if cfg.augment else None
        best, probs = yield from _fit_classifier(net, Xtr, ytr_t, Xva, yva, vmask, weights, opt, sched, augment,
                                                 cfg, device, win)
        nets[win], results[win], val_probs[win] = net, best, probs
    return nets, results, val_probs


def _fit_classifier(net, Xtr, ytr_t, Xva, yva, vmask, weights, opt, sched, augment, cfg: SegConfig, device, win,
                    ) -> Generator[dict, None, tuple]:
    """``cfg.epochs`` epochs of class-weighted cross-entropy; ``net`` ends with its best epoch's
    weights (validation balanced accuracy). Returns ``(best accuracy, its validation probabilities)``."""
    import torch

    from ..models.segmenter import class_probabilities

    correct = [0]
    n_classes = net.head.out_features

    def loss_of(net, x, idx):
        y = ytr_t[idx].to(device)
        logits = net(x)
        correct[0] += int((logits.argmax(1) == y).sum())
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=weights)

    best, best_state, best_probs = -1.0, None, None
    for epoch in range(cfg.epochs):
        correct[0] = 0
        batches = epoch_batches(len(ytr_t), cfg.batch_size, cfg.seed * 100 + epoch)
        fit = yield from fit_epoch(net, Xtr, batches, loss_of, opt, sched, device, augment,
                                   info={"window_um": win, "epoch": epoch})
        probs = class_probabilities(net, Xva, device)
        acc = balanced_accuracy(probs.argmax(1)[vmask], yva[vmask], n_classes)
        if acc > best:
            best, best_probs = acc, probs
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        yield {"stage": "epoch", "window_um": win, "epoch": epoch, "epochs": cfg.epochs,
               "train_loss": fit["loss"], "train_acc": correct[0] / max(1, fit["seen"]), "val_bal_acc": acc,
               "metric": acc, "patches_per_s": fit["seen"] / fit["seconds"], "best": acc >= best}
    net.load_state_dict(best_state)
    return best, best_probs


#: L2 strengths tried for the class head on frozen features (chosen by validation balanced accuracy)
HEAD_L2 = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)


def fit_softmax_head(feats: np.ndarray, y: np.ndarray, n_classes: int, weights: np.ndarray, l2: float,
                     steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted multinomial logistic regression on standardised features (scikit-learn's, L-BFGS):
    minimises the class-weighted mean cross-entropy + ``l2 / 2 * |W|^2``. Returns ``(W, b)`` of all
    ``n_classes`` acting on the *raw* features (the standardisation folded in; a class without samples
    gets a bias that never wins)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(feats, np.float64)
    y = np.asarray(y, np.int64)
    sw = np.asarray(weights, np.float64)[y]
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    # sklearn minimises C * sum(w_i CE_i) + |W|^2 / 2: the weighted mean (torch's) times 1 / (l2 sum(w_i))
    clf = LogisticRegression(C=1.0 / (l2 * sw.sum()), max_iter=steps, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(z, y, sample_weight=sw)
    w = np.zeros((n_classes, x.shape[1]))
    b = np.full(n_classes, -1e4)
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # a binary fit has one row: class 1 vs class 0
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    w[clf.classes_], b[clf.classes_] = coef, icpt
    w = w / scaler.scale_
    b = b - (w * scaler.mean_).sum(1)
    return w.astype(np.float32), b.astype(np.float32)


def _train_on_encoder(tr, va, labels: Labels, cfg: SegConfig, device) -> Generator[dict, None, tuple]:
    """The expression route: the encoder's backbone + a class head on its frozen features (L2 by
    validation balanced accuracy, then refitted on training + validation samples), optionally
    fine-tuned. Returns ``(nets, val_bal_acc, val_probs, features_info)`` keyed by the window."""
    import torch

    from ..models.runtime import for_inference, predict_batches
    from ..models.segmenter import PatchClassifier, class_probabilities

    state, meta = load_artifact(cfg.encoder, kind="expression")
    win = float(meta["window_um"])
    n_classes = len(labels.classes)
    net = PatchClassifier(meta["backbone"], n_classes, tuple(meta["input"]["mean"]), tuple(meta["input"]["std"]))
    net.backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    Xtr = np.concatenate([s.patches[win] for s in tr])
    Xva = np.concatenate([s.patches[win] for s in va])
    yield {"stage": "features", "msg": f"encoder features of {len(Xtr) + len(Xva)} patches"}
    import copy

    frozen = for_inference(copy.deepcopy(net), device)
    body = lambda x: frozen.backbone((x - frozen.pixel_mean) / frozen.pixel_std)  # noqa: E731
    ftr = predict_batches(body, Xtr, device, 128, net.backbone.num_features)
    fva = predict_batches(body, Xva, device, 128, net.backbone.num_features)
    ytr, yva = labels.train, labels.val
    vmask = yva >= 0
    w, b, l2, scores = yield from _class_head_steps(ftr, fva, labels)
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(w))
        net.head.bias.copy_(torch.from_numpy(b))
    best = scores[l2]
    probs = class_probabilities(for_inference(copy.deepcopy(net), device), Xva, device)
    info = {"source": "expression", "encoder": str(cfg.encoder), "encoder_sha256": meta.get("weights_sha256"),
            "head_l2": l2, "head_val_bal_acc": scores, "finetuned": False, "stain_norm": meta.get("stain_norm")}
    if cfg.finetune:
        net = net.to(device)
        steps = max(1, math.ceil(len(ytr) / cfg.batch_size))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.finetune_lr, total_steps=steps * cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed)
        augment = (lambda x: augment_batch(x, gen)) if cfg.augment else None
        weights = torch.tensor(labels.weights, device=device)
        ft_best, ft_probs = yield from _fit_classifier(net, Xtr, torch.from_numpy(ytr), Xva, yva, vmask, weights,
                                                       opt, sched, augment, cfg, device, win)
        info.update(finetuned=True, finetune_val_bal_acc=ft_best)
        best, probs = ft_best, ft_probs
    else:  # the head alone: refit on every labelled sample (validation too) with the chosen L2
        w, b = _refit_on_all(ftr, fva, labels, l2)
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(w))
            net.head.bias.copy_(torch.from_numpy(b))
    return {win: net.cpu()}, {win: best}, {win: probs}, info


def _class_head_steps(ftr: np.ndarray, fva: np.ndarray, labels: Labels) -> Generator[dict, None, tuple]:
    """The class head on frozen features: each of :data:`HEAD_L2` fitted on the training samples and
    scored on the validation ones. Returns ``(W, b, l2, scores)`` of the best (the weakest of ties)."""
    n_classes, vmask = len(labels.classes), labels.val >= 0
    scores = {}
    for l2 in HEAD_L2:
        w, b = fit_softmax_head(ftr, labels.train, n_classes, labels.weights, l2)
        scores[l2] = balanced_accuracy((fva[vmask] @ w.T + b).argmax(1), labels.val[vmask], n_classes)
        yield {"stage": "head", "msg": f"class head, L2 {l2:g}: validation balanced accuracy {scores[l2]:.3f}"}
    l2 = max(scores, key=scores.get)
    w, b = fit_softmax_head(ftr, labels.train, n_classes, labels.weights, l2)
    return w, b, l2, scores


def _refit_on_all(ftr: np.ndarray, fva: np.ndarray, labels: Labels, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The class head refitted with ``l2`` on every labelled sample, validation ones too."""
    vmask = labels.val >= 0
    return fit_softmax_head(np.concatenate([ftr, fva[vmask]]), np.concatenate([labels.train, labels.val[vmask]]),
                            len(labels.classes), labels.weights, l2)


#: principal components a pretrained encoder's features are whitened to before its class head
PRETRAINED_PCA = 128


def whitened_pca(F: np.ndarray, k: int = PRETRAINED_PCA) -> tuple[np.ndarray, np.ndarray]:
    """``(A, offset)`` with ``F @ A - offset`` the first ``k`` principal components of the standardised
    ``F``, each scaled to unit variance (a well-conditioned, low-dimensional input for the class head:
    its fits take ~1/20 of the time on raw 384-2560-wide features)."""
    from sklearn.decomposition import PCA

    mu, sd = F.mean(0), F.std(0) + 1e-6
    z = (F - mu) / sd
    pca = PCA(n_components=int(min(k, len(F) - 1, F.shape[1])), svd_solver="full").fit(z)
    P = pca.components_.T / np.sqrt(pca.explained_variance_ + 1e-12)
    A = P / sd[:, None]
    return A, (mu / sd + pca.mean_) @ P


def _train_on_pretrained(tr, va, labels: Labels, encoder, cfg: SegConfig) -> Generator[dict, None, tuple]:
    """A class head on a pretrained encoder's frozen features (which the sections hold), fitted on
    their whitened principal components (:func:`whitened_pca`, on every labelled sample's features, no
    labels used): L2 by validation balanced accuracy, then refitted on every labelled sample, and
    folded back onto the raw features. Returns ``(nets, val_bal_acc, val_probs, features_info)``
    keyed by the encoder's window."""
    import time

    import torch

    from ..models.segmenter import EncoderClassifier

    t0 = time.perf_counter()
    ftr = np.concatenate([s.features for s in tr])
    fva = np.concatenate([s.features for s in va])
    A, offset = whitened_pca(np.concatenate([ftr, fva[labels.val >= 0]]))
    ptr, pva = ftr @ A - offset, fva @ A - offset
    w, b, l2, scores = yield from _class_head_steps(ptr, pva, labels)
    logits = pva @ w.T + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    w, b = _refit_on_all(ptr, pva, labels, l2)
    w, b = (w @ A.T).astype(np.float32), (b - w @ offset).astype(np.float32)
    net = EncoderClassifier(encoder, len(labels.classes))
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(w))
        net.head.bias.copy_(torch.from_numpy(b))
    win = cfg.windows_um[0]
    info = {"source": "pretrained", "encoder": encoder.kind.name, "encoder_sha256": encoder.sha256, "head_l2": l2,
            "head_val_bal_acc": scores, "finetuned": False, "stain_norm": None, "pca_components": int(A.shape[1]),
            "head_fit_s": round(time.perf_counter() - t0, 2)}
    return {win: net}, {win: scores[l2]}, {win: probs}, info
