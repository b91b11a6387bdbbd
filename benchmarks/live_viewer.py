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


def plugin_slots(panel) -> dict:
    """The longest and p99 Qt-thread slot of the panel's own code, and which slot was slowest."""
    slots = [t for _, t in panel.gui_timings] or [0.0]
    slow = sorted(panel.gui_timings, key=lambda x: -x[1])[:5]
    return {"longest_plugin_slot_ms": round(1e3 * max(slots), 1),
            "plugin_slot_p99_ms": round(1e3 * float(np.percentile(slots, 99)), 1),
            "plugin_slots": len(slots), "plugin_slots_over_50ms": int(sum(t > 0.05 for t in slots)),
            "slowest_slot": slow[0][0] if slow else "",
            "slowest_slots_ms": [(name, round(1e3 * t, 1)) for name, t in slow]}
