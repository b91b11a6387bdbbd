"""int8 inference of a network's convolutional body on x86 CPUs (dense mode).

On a CPU without native bf16 arithmetic the body of a dense prediction is ~95 % of its time; an int8
copy of it (static quantisation: weights per channel, activations per tensor) runs resnet18 ~1.7x
faster on AVX2 cores. Activation ranges come from a calibration pass over windows of tissue of the
slide being predicted, chosen deterministically (:func:`calibration_windows`), so one model gives
the same int8 maps for a slide in the live view and in ``histoexpr predict``. How close int8 maps are
to fp32 ones is measured, not assumed (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import platform

import numpy as np
import torch
from torch import nn

from ..data.patches import tissue_mask
from ..errors import HistoExprError
from ..models.dense import read_scaled
from .catalog import PRECISIONS  # auto: the device's float arithmetic (bf16 where native, else fp32); int8

#: calibration: this many windows of tissue, each this many input px a side
CALIBRATION_WINDOWS = 6
CALIBRATION_PX = 320
#: the int8 body's blocks, in feature cells a side: its kernels' rate per pixel hardly depends on the
#: block's size (resnet18, 2 AVX2 cores: 3.8-4.0 Mpx/s from 640 to 1792 px), so larger blocks than a
#: float body's pay fewer context margins (a whole-slide tile of 32 cells: 2 x 2 blocks, not 4 x 4);
#: int8 activations are a quarter of float ones, so the peak stays below a float body's 25-cell blocks
INT8_BLOCK_FEATS = 50


class NormalisedBody(nn.Module):
    """A backbone's feature map of a float ``[0, 1]`` batch (it normalises the pixels itself): the
    ``body`` of a dense branch, as a module (what quantisation traces)."""

    def __init__(self, backbone: nn.Module, pixel_mean: torch.Tensor, pixel_std: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("pixel_mean", pixel_mean.detach().clone().reshape(1, 3, 1, 1))
        self.register_buffer("pixel_std", pixel_std.detach().clone().reshape(1, 3, 1, 1))

    def forward(self, x):
        return self.backbone.feature_map((x - self.pixel_mean) / self.pixel_std)


class Int8Body(nn.Module):
    """An int8 body: float ``[0, 1]`` input, float feature map out, never under autocast (its float
    edges must stay fp32 even where bf16 autocast is on)."""

    def __init__(self, quantized: nn.Module):
        super().__init__()
        self.quantized = quantized

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return self.quantized(x.float())


def int8_engine() -> str | None:
    """The quantised-kernel engine for this CPU (``x86`` or ``fbgemm``), or ``None`` (not x86, or a
    torch built without them)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "x86"):
        return None
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def int8_unavailable(device: torch.device) -> str | None:
    """Why int8 cannot run on ``device`` (``None``: it can)."""
    if device.type != "cpu":
        return f"precision 'int8' runs on the CPU only (device is {device.type}); GPUs use bf16 (precision 'auto')"
    if int8_engine() is None:
        return "precision 'int8' needs an x86 CPU and a torch with quantised kernels; use precision 'auto'"
    return None


def check_precision(precision: str, device: torch.device, mode: str = "dense") -> str:
    """``precision`` if it can run on ``device`` in ``mode``; a named error otherwise."""
    if precision not in PRECISIONS:
        raise HistoExprError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        why = int8_unavailable(device)
        if why is not None:
            raise HistoExprError(why)
        if mode != "dense":
            raise HistoExprError("precision 'int8' is a dense-mode option (patch mode is the exact reference)")
    return precision


def calibration_windows(pyr, input_per_l0: float, n: int = CALIBRATION_WINDOWS, px: int = CALIBRATION_PX,
                        transform=None, mask: tuple | None = None) -> list[np.ndarray]:
    """``n`` uint8 ``px x px`` windows read at ``input_per_l0`` input px per level-0 px, centred on
    tissue spread over the slide (every ``len(tissue) / n``-th tissue pixel of its coarse mask, in
    raster order: the same windows every time). The whole slide's middle if it has no tissue.
    ``mask``: the slide's ``(tissue mask, downsample)`` if already made."""

    mask, ds = mask if mask is not None else tissue_mask(pyr)
    ys, xs = np.nonzero(mask)
    if len(ys):
        pick = np.linspace(0, len(ys) - 1, n + 2)[1:-1].round().astype(int)
        centres = [((ys[i] + 0.5) * ds, (xs[i] + 0.5) * ds) for i in pick]
    else:
        h, w = pyr.level0_shape
        centres = [(h / 2, w / 2)]
    half = px / 2 / input_per_l0
    out = []
    for cy, cx in centres:
        img = read_scaled(pyr, cy - half, cx - half, px, px, input_per_l0)
        out.append(img if transform is None else transform(img))
    return out


def _qconfig_mapping(engine: str):
    """The engine's default int8 recipe (per-channel weights), with min/max activation observers:
    its histogram observers took ~10 s to calibrate resnet18 on 2 cores, for no measured gain."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(engine)
    act = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True)
    return mapping.set_global(QConfig(activation=act, weight=mapping.global_qconfig.weight))


@contextlib.contextmanager
def _no_stack_traces():
    """FX tracing without a Python stack trace recorded per graph node: symbolising them imported
    torch's compiler stack (~1200 modules, ~2.5 s holding the GIL) at a process's first
    calibration, and took ~0.2 s at every later one; the int8 graph never uses them."""
    import torch.fx.config as fx_config

    old = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = old


def quantize_body(body: nn.Module, windows: list[np.ndarray]) -> Int8Body:
    """An int8 copy of ``body`` (a float module, eval mode, BatchNorms folded or not), its activation
    ranges calibrated on ``windows`` (uint8 RGB)."""
    import copy
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from .runtime import to_tensor

    engine = int8_engine()
    if engine is None:
        raise HistoExprError("int8 inference needs an x86 CPU and a torch with quantised kernels")
    torch.backends.quantized.engine = engine
    float_body = copy.deepcopy(body).float().eval().to("cpu", memory_format=torch.contiguous_format)
    example = to_tensor(windows[0][None])
    with warnings.catch_warnings(), _no_stack_traces():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(float_body, _qconfig_mapping(engine), (example,))
        except Exception as e:  # noqa: BLE001 - a body FX cannot trace
            raise HistoExprError(f"this network cannot be quantised to int8 ({type(e).__name__}: {e}); "
                                 "use precision 'auto'") from e
        try:
            with torch.inference_mode():
                for w in windows:
                    prepared(to_tensor(w[None]))
            quantized = convert_fx(prepared)
        finally:
            _forget_quantised_graphs()
    return Int8Body(quantized).eval()


def _forget_quantised_graphs() -> None:
    """Empty torch's unbounded cache of the modules FX quantisation asked for their device
    (``torch.ao.quantization.fx.utils.assert_and_get_unique_device``, ``functools.cache`` keyed by the
    module): it kept the traced, observed and converted copies of every body ever quantised, ~100 MB
    for resnet18, so each model loaded in a session stayed in memory."""
    try:
        from torch.ao.quantization.fx import utils
    except ImportError:  # a torch without FX quantisation: nothing cached
        return
    clear = getattr(getattr(utils, "assert_and_get_unique_device", None), "cache_clear", None)
    if clear is not None:
        clear()
