"""What every dock panel does the same way: turn errors into a status line and a notification, and
load a model folder named in a file field."""

from __future__ import annotations

from ..errors import HistoExprError


def notify_error(e) -> None:
    """A napari error notification: named errors by their message, others with their type."""
    from napari.utils.notifications import show_error

    show_error(str(e) if isinstance(e, (str, HistoExprError)) else f"{type(e).__name__}: {e}")


class PanelMixin:
    """For panels with ``self._status`` (a Label) and, to load models, ``self._model_edit``/``_device``."""

    _closed = False

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

    def _load_model_folder(self, loader, path, missing: str):
        """``loader(path, device)`` on the chosen folder; errors are reported, not raised."""
        path = path or self._model_edit.value
        try:
            if not path:
                raise HistoExprError(missing)
            model = loader(path, self._device.value)
        except HistoExprError as e:
            return self._fail(e)
        if str(self._model_edit.value or "") != str(path):
            self._model_edit.value = path
        return model


def start_worker(func, *args, desc: str | None = None, total: int | None = None, yielded=None,
                 returned=None, errored=None, finished=None):
    """Run ``func(*args)`` (a function or generator) in a napari worker with a progress bar in the
    activity dock; errors go to ``errored`` instead of being re-raised. Returns the started worker.

    Handlers are connected before the worker starts, and they run on the Qt thread only after the
    caller returns to the event loop, so the caller may still store the worker for them.
    """
    from napari.qt.threading import create_worker

    progress = {"desc": desc} if desc else None
    if progress is not None and total is not None:
        progress["total"] = total
    worker = create_worker(func, *args, _progress=progress, _ignore_errors=True)
    for signal, handler in (("yielded", yielded), ("returned", returned), ("errored", errored),
                            ("finished", finished)):
        if handler is not None:
            getattr(worker, signal).connect(handler)
    worker.start()
    return worker
