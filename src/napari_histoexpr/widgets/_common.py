"""What every dock panel does the same way: a public API over its settings and state, errors as a
status line and a notification, loading a model folder named in a file field, workers, tables."""

from __future__ import annotations

import functools
import time

from ..errors import HistoExprError
from ..infer.region import MODES
from ..models.catalog import PRECISIONS, view_precision_default


def notify_error(e) -> None:
    """A napari error notification: named errors by their message, others with their type."""
    from napari.utils.notifications import show_error

    show_error(str(e) if isinstance(e, (str, HistoExprError)) else f"{type(e).__name__}: {e}")


class PanelMixin:
    """For panels with ``self._status`` (a Label) and, to load models, ``self._model_edit``/``_device``.

    ``SETTINGS`` maps the public names of a panel's settings to its widgets: scripts and tests use
    :meth:`configure`, :meth:`setting` and :meth:`choices`, never the widgets themselves.
    """

    _closed = False
    _worker = None
    SETTINGS: dict[str, str] = {}

    def _setting_widget(self, name: str):
        try:
            return getattr(self, self.SETTINGS[name])
        except KeyError:
            raise TypeError(f"{type(self).__name__} has no setting {name!r}; "
                            f"settings: {', '.join(self.SETTINGS)}") from None

    def configure(self, **values) -> None:
        """Set settings by name, as a user would in the panel (their change handlers run)."""
        for name, value in values.items():
            self._setting_widget(name).value = value

    def setting(self, name: str):
        return self._setting_widget(name).value

    def choices(self, name: str) -> tuple:
        return tuple(self._setting_widget(name).choices)

    @property
    def status(self) -> str:
        """The panel's status line."""
        return str(self._status.value)

    @property
    def busy(self) -> bool:
        """A worker of this panel is running."""
        return self._worker is not None

    def actions(self) -> dict[str, bool]:
        """Each button's text and whether it can be pressed now."""
        from magicgui.widgets import PushButton

        return {w.text: bool(w.enabled) for w in self if isinstance(w, PushButton)}

    def _stop_workers_on_close(self, *names: str) -> None:
        """When the panel's widget is destroyed (viewer closed), stop its workers and ignore their
        late signals, so nothing touches deleted Qt objects."""

        def closed(*_):
            self._closed = True
            for n in names:
                w = getattr(self, n, None)
                if w is not None:
                    try:
                        w.quit()
                    except RuntimeError:
                        pass

        self.native.destroyed.connect(closed)

    def _fail(self, e):
        """Show ``e`` in the panel and as a notification; returns ``None`` for ``return self._fail(e)``."""
        self._status.value = f"error: {e}"
        notify_error(e)
        return None

    def _load_model_folder(self, loader, path, missing: str, done=None):
        """``loader(path, device)`` on the chosen folder; errors are reported, not raised. With
        ``done``, the folder loads in a worker (the viewer stays responsive) and ``done(model)`` runs
        on the Qt thread afterwards; the worker is returned instead of the model."""
        path = path or self._model_edit.value
        if not path:
            return self._fail(HistoExprError(missing))

        def remember(model):
            if str(self._model_edit.value or "") != str(path):
                self._model_edit.value = path
            return model

        if done is not None:
            from pathlib import Path

            self._status.value = f"loading {Path(str(path)).name}…"
            return start_worker(loader, str(path), self._device.value, returned=lambda m: done(remember(m)),
                                errored=self._fail)
        try:
            return remember(loader(path, self._device.value))
        except HistoExprError as e:
            return self._fail(e)


@functools.cache
def _closing_worker_class():
    from napari.qt.threading import GeneratorWorker

    class ClosingGeneratorWorker(GeneratorWorker):
        """A generator worker that closes its generator in its own thread when it stops, also when
        quit: superqt leaves a quit generator suspended, and its clean-up (``finally`` blocks, a
        reader pool waiting for its last read) then ran wherever the garbage collector happened to
        close it: on the Qt thread (slots of 200-300 ms) or in a reader thread (a deadlock)."""

        def work(self):
            try:
                return super().work()
            finally:
                self._gen.close()

    return ClosingGeneratorWorker


def start_worker(func, *args, desc: str | None = None, total: int | None = None, yielded=None,
                 returned=None, errored=None, finished=None):
    """Run ``func(*args)`` (a function or generator) in a napari worker with, given ``desc``, a
    progress bar in the activity dock; errors go to ``errored`` instead of being re-raised. Returns
    the started worker.

    Handlers are connected before the worker starts, and they run on the Qt thread only after the
    caller returns to the event loop, so the caller may still store the worker for them.

    The worker is built from its class, not with ``create_worker``: with a viewer open, napari 0.9's
    ``create_worker`` records every worker in the window's task list for good (its cancel callback
    holds the worker), so each view request kept its worker, handlers, arguments and progress bar
    alive: ~0.6 GB over 1000 camera moves (``benchmarks/long_session.py``).
    """
    import inspect

    from napari.qt.threading import FunctionWorker
    from napari.utils import progress

    gen = inspect.isgeneratorfunction(getattr(func, "func", func))  # functools.partial too
    worker = (_closing_worker_class() if gen else FunctionWorker)(func, *args)
    if desc:
        pbar = progress(total=total if gen and total else 0, desc=desc)
        if gen and total:
            worker.yielded.connect(lambda *_: pbar.increment_with_overflow())
        worker.finished.connect(pbar.close)
    for signal, handler in (("yielded", yielded), ("returned", returned), ("errored", errored),
                            ("finished", finished)):
        if handler is not None:
            getattr(worker, signal).connect(handler)
    worker.start()
    return worker


def timed(fn):
    """Record a Qt-thread slot of a panel in ``panel.gui_timings`` as ``(name, seconds, start,
    cpu_seconds)`` (``time.perf_counter`` at its start; the Qt thread's own CPU time: the rest is
    waiting, e.g. for the GIL; for benchmarks); a worker's late signal after the viewer closed is
    ignored."""

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        if self._closed:
            return None
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(self, *a, **kw)
        finally:
            self.gui_timings.append((fn.__name__, time.perf_counter() - t0, t0, time.thread_time() - c0))

    return wrapper


def fill_table(table, rows: list[tuple]) -> None:
    """Fill a QTableWidget with ``rows`` of already formatted cells."""
    from qtpy.QtWidgets import QTableWidgetItem

    table.setRowCount(len(rows))
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            table.setItem(i, j, QTableWidgetItem(str(v)))


def make_table(panel, headers: list[str]):
    """A small QTableWidget added under ``panel``."""
    from qtpy.QtWidgets import QTableWidget

    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setMinimumHeight(120)
    panel.native.layout().addWidget(table)
    return table


def mode_choice():
    """The prediction-mode choice of the panels that predict on a grid (expression view, segmenter)."""
    from magicgui.widgets import ComboBox


    box = ComboBox(label="mode", choices=list(MODES), value=MODES[0])
    box.tooltip = ("dense: one backbone pass per region, pooled per cell (fast); "
                   "patch: every cell's window on its own (the exact reference, slower)")
    return box


def precision_choice():
    """The precision choice of those panels: int8 by default on CPUs where it is the fast choice."""
    from magicgui.widgets import ComboBox


    box = ComboBox(label="precision", choices=list(PRECISIONS), value=view_precision_default())
    box.tooltip = ("int8 (dense mode, CPU): the backbone quantised and calibrated on the slide, ~1.7x "
                   "faster where the CPU lacks bf16; auto: bf16 on GPUs and bf16 CPUs, else fp32")
    return box


def fmt(v: float) -> str:
    import math

    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"
