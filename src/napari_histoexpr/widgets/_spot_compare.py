"""Measured vs predicted at the spots, for the "Predicted expression" panel: residual layers, clicked
spot values and the r table (over the spots in view and over the section)."""

from __future__ import annotations

import numpy as np

from ..errors import HistoExprError
from ..infer.spot_prediction import predict_at_spots
from ..layerdata import residual_layer_data
from ..metrics import pearson_columns
from ._common import fill_table, fmt, start_worker
from ._session import attach_core
from .layers import find_layer, upsert_layer


class SpotComparison:
    """Mixin for a panel with ``model``, ``session``, ``predictor``, ``table``, ``_picked`` and
    ``selected_genes()``/``view_box()``."""

    spot_pred = None  # a SpotPrediction of the open section

    def residual_layer(self, gene: str):
        return find_layer(self._viewer, f"resid:{gene}")

    def compare_spots(self):
        """Predict at every measured spot (as in evaluation), add residual layers and the r table."""

        try:
            if self.model is None:
                raise HistoExprError("load a model first")
            adata, pyr = self.session.require_spots(), self.session.require_slide()
        except HistoExprError as e:
            return self._fail(e)
        self._spot_worker = start_worker(predict_at_spots, self.model, pyr, adata, "view", 0.0, self._mode.value,
                                         desc="Predicting at spots", returned=self._on_spots, errored=self._fail)
        self._status.value = "predicting at the measured spots…"
        return self._spot_worker

    def _on_spots(self, sp):
        if self._closed:
            return
        self.spot_pred = sp
        mpp, size = self.session.require_slide().world_mpp, self.session.spot_size_um()
        for g in [g for g in self.selected_genes() or sp.genes[:1] if g in sp.genes]:
            layer = upsert_layer(self._viewer, residual_layer_data(sp, g, self.selected_genes(), mpp, size),
                                 f"resid:{g}")
            attach_core(layer, sp)  # the whole comparison (every gene), e.g. for a QuPath export
            if self._on_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._on_click)
            layer.face_colorbar.visible = True
        self._status.value = f"compared {len(sp.spot_ids)} spots"
        self.update_table()

    def _on_click(self, layer, event):
        self.pick(layer, event.position)

    def pick(self, layer, position) -> str:
        """Show the measured and predicted values of the spot of ``layer`` at world ``position``."""
        idx = layer.get_value(position, world=True)
        if idx is not None:
            row = layer.features.iloc[int(idx)]
            self._picked.value = "\n".join([f"spot {row['spot']}"] + [
                f"{c}: {row[c]:.3f}" for c in layer.features.columns if c != "spot"])
        return self.picked

    @property
    def picked(self) -> str:
        return str(self._picked.value)

    def table_rows(self) -> list[tuple[str, float, float, int]]:
        """``(gene, r over spots in view, r over the section, spots in view)`` per selected gene, then the
        gene-set score's row when a set is chosen."""

        sp = self.spot_pred
        if sp is None:
            return []
        xy = np.asarray(sp.xy)
        inside = np.ones(len(xy), bool)
        if self.predictor is not None:
            y0, x0, y1, x1 = self.view_box()
            inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        r_all = sp.pearson()
        r_view = (pearson_columns(sp.pred[inside], sp.meas[inside]) if inside.sum() > 2
                  else np.full(len(sp.genes), np.nan))
        return [(g, float(r_view[sp.genes.index(g)]), float(r_all[sp.genes.index(g)]), int(inside.sum()))
                for g in (self.selected_genes() or sp.genes) if g in sp.genes] + self.score_rows(inside)

    def score_rows(self, inside) -> list[tuple]:  # a gene-set score's row (SetScores)
        return []

    def update_table(self):
        if not self._closed:
            fill_table(self.table, [(g, fmt(rv), fmt(ra), n) for g, rv, ra, n in self.table_rows()])
