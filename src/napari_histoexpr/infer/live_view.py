"""The state of a live predicted view, without Qt: which model is shown, the predictor and raster of the
open slide, and which view request is current (latest wins). A panel observes its events and wires them
to layers (the model/view split of napari-spatialdata's ``DataModel``); scripts and tests drive it
directly, without a viewer.

Events (psygnal signals, emitted on the thread that changed the state):

- ``model_changed(model)``: another model (or ``None``); the predictor and raster are dropped
- ``predictor_changed(predictor, raster)``: the grid the view's layers must show from now on
- ``tile_ready(tile, values)``: a predicted tile was put into the raster
- ``status(text)``: a one-line account of the current request
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from psygnal import Signal


class LatestRequest:
    """Latest-wins bookkeeping: each new request supersedes (cancels) the ones before it."""

    def __init__(self):
        self._n = 0
        self._lock = threading.Lock()

    def new(self) -> Callable[[], bool]:
        with self._lock:
            self._n += 1
            mine = self._n
        return lambda: self._n != mine


@dataclass
class ViewRequest:
    """One request of the live view: its ``tiles`` (nearest the view centre first), those still to
    compute (``todo``), how many came from the cache at once, and its ``cancelled`` test."""

    predictor: object
    tiles: list
    todo: list
    cached: int
    cancelled: Callable[[], bool] = field(repr=False)


class LiveView:
    """What a live predicted view shows and asks for; see the module's docstring for its events."""

    model_changed = Signal(object)
    predictor_changed = Signal(object, object)
    tile_ready = Signal(object, object)
    status = Signal(str)

    def __init__(self):
        self.model = None
        self.predictor = None  # a RegionPredictor of the model on the open slide
        self.raster = None  # its Raster: the layers' arrays, filled in place
        self.requests = LatestRequest()
        self.last_request_tiles: list = []  # the tiles of the latest view request
        self._request_pred = None  # the predictor of last_request_tiles

    def set_model(self, model) -> None:
        """Show ``model`` from now on: any request in flight is superseded, the predictor dropped."""
        self.supersede()
        self.model, self.predictor, self.raster = model, None, None
        self.model_changed.emit(model)

    def fits(self, pred, mode: str, precision: str, stride_um: float | None) -> bool:
        """Whether ``pred`` predicts with this view's model in ``mode`` / ``precision``, its current
        outputs (the uncertainty channels on or off) and at the grid step asked for (``None`` or 0: any)."""
        return (pred is not None and pred.model is self.model and pred.requested_mode == mode
                and pred.channels == list(self.model.outputs)
                and pred.requested_precision == precision
                and (not stride_um or abs(pred.requested_stride_um - stride_um) < 1e-6))

    def set_predictor(self, pred, raster) -> None:
        """Use ``pred`` and its empty ``raster`` (built in a worker) from now on."""
        self.supersede()
        self.predictor, self.raster = pred, raster
        self.predictor_changed.emit(pred, raster)

    def supersede(self) -> None:
        """Cancel the request in flight (its worker stops at its next tile)."""
        self.requests.new()

    def request(self, box, in_flight: bool = False) -> ViewRequest | None:
        """A request for the level-0 ``box`` (``(y0, x0, y1, x1)``), superseding the one before, with
        the tiles already cached put into the raster at once; ``None`` when this view is the latest
        request and is shown already or (``in_flight``) being predicted."""
        pred = self.predictor
        tiles = pred.view_tiles(box)
        if pred is self._request_pred and tiles == self.last_request_tiles and (
                in_flight or all(t in pred.cache for t in tiles)):
            return None
        self.last_request_tiles, self._request_pred = tiles, pred
        cancelled = self.requests.new()
        todo = []
        for t in tiles:  # cached tiles are put at once (cheap copies)
            hit = pred.cache.get(t)
            if hit is not None:
                self.raster.put(t, hit)
            else:
                todo.append(t)
        req = ViewRequest(pred, tiles, todo, len(tiles) - len(todo), cancelled)
        self.status.emit(f"predicting {len(todo)} of {len(tiles)} tiles in view…" if todo else
                         (f"{len(tiles)} tiles in view (all cached)" if tiles else "no tissue in view"))
        return req

    def accept(self, req: ViewRequest, tile, values) -> bool:
        """Put a tile a request's worker predicted into the raster (a superseded request's tiles are
        still right: kept); ``False`` if its predictor is no longer shown."""
        if req.predictor is not self.predictor:
            return False
        self.raster.put(tile, values)
        self.tile_ready.emit(tile, values)
        return True

    def pending(self) -> int:
        """Tiles of the latest request not predicted yet."""
        if self.predictor is None:
            return 0
        return sum(t not in self.predictor.cache for t in self.last_request_tiles)

    def stopped(self) -> None:
        """Report a stopped request (its done tiles stay cached and shown)."""
        self.status.emit(f"stopped: {self.pending()} of {len(self.last_request_tiles)} tiles in view not predicted")

    def finished(self, req: ViewRequest) -> None:
        """Report a request whose worker ended (only the latest request reports)."""
        if req.predictor is self.predictor and not req.cancelled():
            self.status.emit(f"view predicted ({len(req.todo)} new tiles, {len(self.predictor.cache)} cached)")
