"""Names the CLI and the panels offer, without importing torch (a test checks them against the models)."""

import functools
import os
import platform

BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_b1",
                  "efficientnet_b2", "efficientnet_b3", "efficientnet_b4")
#: the pretrained encoders a weights file can be named as (``models.encoder_files.ENCODERS``)
ENCODER_NAMES = ("uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "gigapath", "dino-vit-s16", "dino-vit-s8",
                 "conch", "phikon", "phikon-v2", "resnet50-imagenet", "resnet18-ssl")
#: heads fitted on an encoder's frozen features
HEADS = ("ridge", "mlp")
#: ``auto`` = CUDA, then Apple ``mps``, then CPU
DEVICES = ("auto", "cpu", "cuda", "mps")
#: dense-mode precisions (see ``models.quantize``)
PRECISIONS = ("auto", "int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """This CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX-BF16); ``HISTOEXPR_CPU_BF16`` = ``1``/``0`` forces it."""
    forced = os.environ.get("HISTOEXPR_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def view_precision_default() -> str:
    """The live view's default precision: ``int8`` on an x86 CPU with AVX2 but no native bf16 (where
    int8 runs the dense body ~1.7x faster than fp32), else ``auto``. Without importing torch: on a
    machine with a GPU the predictor runs ``auto`` anyway (int8 is a CPU option)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "int8" if x86 and "avx2" in cpu_flags() and not cpu_has_bf16() else "auto"
