"""What the viewer benchmarks share: a real viewer on a generated slide with the "Slide & spots" and
"Predicted expression" panels, a meter of how long the Qt thread was kept from its event loop, and
waiting until the view's predicted tiles are all on screen."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def open_live_viewer(slide: Path, model_dir: Path, device: str, genes=("G0", "G1"), size=(1400, 900)):
    """A shown napari viewer with the slide open and ``model_dir`` loaded in the expression panel."""
    import napari

    from napari_histoexpr.viewer_app import wait_for
    from napari_histoexpr.widgets.expression_view import ExpressionPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*size)
    sp = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(sp)
    wait_for(sp.open(slide=str(slide)))
    panel = ExpressionPanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.configure(device=device)
    panel.load_model(model_dir, genes=list(genes))
    return viewer, panel


class QtGapMeter:
    """A 5 ms QTimer; each gap between its ticks beyond 5 ms is time the Qt thread was blocked."""

    def __init__(self, interval_ms: int = 5):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1e3
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def restart(self) -> None:
        """Forget the gaps so far and the one in progress (e.g. after work the benchmark itself ran
        on this thread)."""
        self.gaps.clear()
        self._last = time.perf_counter()

    def blocked_ms(self) -> np.ndarray:
        return 1e3 * (np.asarray(self.gaps or [self.interval]) - self.interval)

    def stop(self):
        self._timer.stop()


def view_complete(panel) -> bool:
    """No work in flight and every tile of the last view request is predicted."""
    pred = panel.predictor
    return (not panel.busy and pred is not None
            and all(pred.cache.get(t) is not None for t in panel.last_request_tiles))


def settle(panel, timeout: float = 120.0) -> float:
    """Process Qt events until :func:`view_complete`; returns the seconds it took."""
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        QApplication.processEvents()
        if view_complete(panel):
            return time.perf_counter() - t0
        time.sleep(0.001)
    raise TimeoutError(f"the view was not predicted within {timeout:g} s: {panel.status}")


def pump(seconds: float) -> None:
    """Run the Qt event loop for ``seconds`` (a user dwelling on a view)."""
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.001)


def pct_ms(v) -> dict:
    """p50/p95 in ms of durations in seconds."""
    return {"p50": round(1e3 * float(np.percentile(v, 50)), 1),
            "p95": round(1e3 * float(np.percentile(v, 95)), 1), "n": len(v)}


class GcMeter:
    """Python's cyclic garbage collections while it runs, as ``(generation, start, end)``
    (``time.perf_counter``). A collection runs in whichever thread allocates when a threshold is
    crossed, holding the GIL: a full (generation 2) pass over napari's ~500 000 objects takes
    100-300 ms and lands inside whatever Qt slot happens to be running."""

    def __init__(self):
        import gc

        self.events: list[tuple[int, float, float]] = []
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase, info):
        now = time.perf_counter()
        if phase == "start":
            self._t0 = now
        else:
            self.events.append((info["generation"], self._t0, now))

    def within(self, start: float, end: float) -> float:
        """Seconds of garbage collection inside ``[start, end]``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for _, a, b in self.events)

    def summary(self) -> dict:
        full = [b - a for g, a, b in self.events if g == 2]
        return {"gc_full_collections": len(full),
                "gc_full_ms_max": round(1e3 * max(full), 1) if full else 0.0,
                "gc_full_ms_p50": round(1e3 * float(np.median(full)), 1) if full else 0.0,
                "gc_young_ms_max": round(1e3 * max([b - a for g, a, b in self.events if g < 2] or [0.0]), 1)}

    def stop(self):
        import gc

        if self._cb in gc.callbacks:
            gc.callbacks.remove(self._cb)


def plugin_slots(panel, gc_meter: GcMeter | None = None) -> dict:
    """The longest and p99 Qt-thread slot of the panel's own code, and which slots were slowest.
    With ``gc_meter``, each slow slot also says how much of it was a garbage collection that
    happened to run inside it, and the count over 50 ms is also given without that time."""
    rec = list(panel.gui_timings) or [("", 0.0, 0.0, 0.0)]
    slots = [t for _, t, _, _ in rec]
    slow = sorted(rec, key=lambda x: -x[1])[:5]
    res = {"longest_plugin_slot_ms": round(1e3 * max(slots), 1),
           "plugin_slot_p99_ms": round(1e3 * float(np.percentile(slots, 99)), 1),
           "plugin_slots": len(slots), "plugin_slots_over_50ms": int(sum(t > 0.05 for t in slots)),
           "slowest_slot": slow[0][0],
           "slowest_slots_ms": [(name, round(1e3 * t, 1)) for name, t, _, _ in slow],
           "slowest_slots_qt_thread_cpu_ms": [(name, round(1e3 * c, 1)) for name, _, _, c in slow]}
    if gc_meter is not None:
        gc_in = [gc_meter.within(t0, t0 + t) for _, t, t0, _ in rec]
        own = [t - g for t, g in zip(slots, gc_in)]
        res.update({"plugin_slots_over_50ms_less_gc": int(sum(t > 0.05 for t in own)),
                    "longest_plugin_slot_less_gc_ms": round(1e3 * max(own), 1),
                    "slowest_slots_ms_gc_ms": [(name, round(1e3 * t, 1), round(1e3 * gc_meter.within(t0, t0 + t), 1))
                                               for name, t, t0, _ in slow],
                    **gc_meter.summary()})
    return res
