"""The "Predicted expression" panel's gene-set score: a layer of the chosen set's score (scanpy's
score_genes: set mean minus matched controls, :mod:`napari_histoexpr.data.gene_sets`) that follows the
view with the gene layers, the measured spots' score beside it, and a row in the r table comparing
predicted and measured scores at the spots (the same controls for both, chosen from the model's mean
training target). Wiring only."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, LineEdit, PushButton

from ..data.gene_sets import BUILTIN, parse_set_arg, prepare
from ..data.gene_values import log1p_normalised
from ..errors import HistoExprError
from ..infer.set_scores import reference_means
from ..layerdata import grid_image_kwargs, spot_values_layer_data
from ..metrics import pearson_columns
from .layers import find_layer, upsert_layer

NONE = "none"
SCORE_KEY = "score:set"
MEASURED_KEY = "score:set:measured"  # the set's score of the measured spots


class SetScores:
    """For :class:`~napari_histoexpr.widgets.expression_view.ExpressionPanel` (``model``, ``predictor``,
    ``raster``, ``view``, ``spot_pred``, ``view_box``, ``update_table``, ``_fail``)."""

    score_set = None  # the chosen set prepared for the model (a SetScore), or None

    def _init_scores(self):
        self.gene_sets = dict(BUILTIN)
        self._set_pick = ComboBox(label="gene-set score", choices=[NONE, *self.gene_sets], value=NONE)
        self._set_pick.tooltip = "\n".join(f"{s.name}: {s.source}" for s in BUILTIN.values())
        self._set_text = LineEdit(label="add set", value="")
        self._set_text.tooltip = "NAME=G1,G2,... or the path of a GMT / text file of gene sets"
        self._set_btn = PushButton(text="Add gene set")
        self._set_pick.changed.connect(lambda *_: self._on_set(announce=True))
        self._set_btn.changed.connect(lambda *_: self.add_gene_set())
        self.view.predictor_changed.connect(lambda *_: self._on_set())
        return [self._set_pick, self._set_text, self._set_btn]

    def add_gene_set(self, text: str | None = None) -> list[str]:
        """Add typed (``NAME=G1,G2``) or file (GMT, text) sets to the choices and show the first."""
        try:
            sets = parse_set_arg(text if text is not None else self._set_text.value)
        except HistoExprError as e:
            self._fail(e)
            return []
        self.gene_sets.update({s.name: s for s in sets})
        self._set_pick.choices = [NONE, *self.gene_sets]
        self._set_pick.value = sets[0].name
        return [s.name for s in sets]

    def score_layer(self):
        return find_layer(self._viewer, SCORE_KEY)

    def _on_set(self, announce: bool = False):
        """Prepare the chosen set for the model (controls) and bring the score layer to the raster."""
        name, m = self._set_pick.value, self.model
        self.score_set = None
        if name == NONE or m is None:
            for layer in (self.score_layer(), find_layer(self._viewer, MEASURED_KEY)):
                if layer is not None:
                    self._viewer.layers.remove(layer)
            return self.update_table()
        try:
            self.score_set = prepare(self.gene_sets[name], reference_means(m))
        except HistoExprError as e:
            self._set_pick.value = NONE
            return self._fail(e)
        s = self.score_set
        if announce:
            self._status.value = (f"score '{s.name}': {len(s.genes)} genes, {len(s.controls)} controls"
                                  + (f"; not in the model: {', '.join(s.missing)}" if s.missing else ""))
        self._score_to_raster()
        self._score_spots()
        self.update_table()

    def measured_score_layer(self):
        return find_layer(self._viewer, MEASURED_KEY)

    def _score_spots(self):
        """The set's score of the measured spots (the same controls), as a Points layer."""
        adata, pyr, s = self.session.spots(), self.session.slide(), self.score_set
        if adata is None or pyr is None or s is None:
            return None
        use = s.within(map(str, adata.var_names))
        if use is None:
            return None
        names = use.genes + use.controls
        vals = use.of(log1p_normalised(adata, names), names)
        meta = {"kind": "score", "set": s.name, "measured": True}
        return upsert_layer(self._viewer, spot_values_layer_data(
            adata, vals, f"score: {s.name} (measured)", pyr.world_mpp, self.session.spot_size_um(), meta),
            MEASURED_KEY)

    def _score_to_raster(self):
        if self.score_set is None or self.predictor is None or self.raster is None:
            return None
        grid = self.predictor.grid
        data = np.full((grid.rows, grid.cols), np.nan, np.float32)
        kw = grid_image_kwargs(grid, self.predictor.pyr.world_mpp, f"score: {self.score_set.name}", "coolwarm",
                               0.6, {"kind": "score", "set": self.score_set.name, **self.score_set.describe()})
        layer = upsert_layer(self._viewer, (data, kw, "image"), SCORE_KEY)
        layer.data = data
        self._refresh_score(final=True, whole=True)
        return layer

    def _refresh_score(self, final: bool = True, whole: bool = False):
        """Score the cells in view (all cells with ``whole``) from the raster; redraw the layer."""
        layer, s = self.score_layer(), self.score_set
        if layer is None or s is None or self.raster is None:
            return
        if layer.data.shape != self.raster.data.shape[1:]:
            self._score_to_raster()
            return
        names = list(self.model.outputs)
        rs, cs = (slice(None), slice(None)) if whole else self._view_cells()
        layer.data[rs, cs] = s.of(self.raster.data[:, rs, cs], names, axis=0)
        fin = layer.data[np.isfinite(layer.data)]
        if fin.size:
            lim = float(np.percentile(np.abs(fin), 99)) or 1e-3
            layer.contrast_limits = (-lim, lim)  # diverging around the controls' level
        layer.refresh(thumbnail=final, extent=False, highlight=False)

    def _view_cells(self):
        g, t = self.predictor.grid, self.predictor.grid.tile_cells
        y0, x0, y1, x1 = self.view_box()
        r0, c0 = max(0, int(y0 / g.stride) - t), max(0, int(x0 / g.stride) - t)
        return slice(r0, int(y1 / g.stride) + t + 1), slice(c0, int(x1 / g.stride) + t + 1)

    def _refresh_layers(self, final: bool = True):
        super()._refresh_layers(final)
        self._refresh_score(final)

    def score_rows(self, inside: np.ndarray) -> list[tuple]:
        """``(score: NAME, r over spots in view, r over the section, spots in view)`` of predicted vs
        measured scores at the compared spots (the set's and controls' genes both measure)."""
        sp, s = self.spot_pred, self.score_set
        if sp is None or s is None:
            return []
        use = s.within(sp.genes)
        if use is None:
            return []
        p, m = use.of(sp.pred, sp.genes), use.of(sp.meas, sp.genes)
        r_all = float(pearson_columns(p[:, None], m[:, None])[0])
        r_view = float(pearson_columns(p[inside, None], m[inside, None])[0]) if inside.sum() > 2 else float("nan")
        return [(f"score: {s.name}", r_view, r_all, int(inside.sum()))]
