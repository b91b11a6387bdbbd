"""The "Predicted expression" panel's trust controls: uncertainty layers that follow the view beside the
predictions, and the open slide's distance to the model's training sections (a label, and a napari
warning when the slide is out of distribution). Wiring only: :mod:`napari_histoexpr.models.trust` and
:func:`napari_histoexpr.infer.slide_trust.slide_ood` do the work."""

from __future__ import annotations

from magicgui.widgets import CheckBox, Label

from ..errors import HistoExprError
from ..infer.slide_trust import WINDOWS, slide_ood
from ..models.trust import uncertainty_channel
from ._common import start_worker


class TrustView:
    """For :class:`~napari_histoexpr.widgets.expression_view.ExpressionPanel` (``model``, ``predictor``,
    ``selected_genes``, ``predict_view``, ``_fail``)."""

    _ood_worker = None
    #: the open slide's out-of-distribution figures (``slide_ood``'s dict), once computed
    ood: dict | None = None
    _ood_key = None

    def _init_trust(self):
        self._uncertainty = CheckBox(label="uncertainty layers", value=False)
        self._uncertainty.tooltip = ("Beside each predicted gene, its expected absolute error (log1p units; higher "
                                     "= trust less), from the model's calibration on its training spots")
        self._ood_label = Label(value="")
        self._uncertainty.changed.connect(self._on_uncertainty)
        return [self._uncertainty, self._ood_label]

    def shown_channels(self) -> list[str]:
        """The raster channels shown as layers: the selected genes, and their uncertainty when on."""
        genes = self.selected_genes()
        m = self.model
        if m is None or not getattr(m, "uncertainty", False):
            return genes
        return genes + [uncertainty_channel(g) for g in genes]

    def _apply_uncertainty(self, model) -> None:
        """A newly loaded model takes the check box's state (off, and the box disabled, if uncalibrated)."""
        self._uncertainty.enabled = model.trust is not None
        self._uncertainty.tooltip = (self._uncertainty.tooltip if model.trust is not None else
                                     "This model has no calibration: `histoexpr calibrate` adds one")
        model.set_uncertainty(bool(self._uncertainty.value) and model.trust is not None)
        self.ood, self._ood_key = None, None
        self._ood_label.value = ""

    def _on_uncertainty(self, *_):
        m = self.model
        if m is None or bool(self._uncertainty.value) == m.uncertainty:
            return
        try:  # a copy of the model with the other outputs: a view being predicted keeps its own
            model = m.with_uncertainty(bool(self._uncertainty.value))
        except HistoExprError as e:
            self._uncertainty.value = False
            self._fail(e)
            return
        self._halt()
        self.view.set_model(model)
        self.predict_view()  # a new predictor for the new outputs; the layers follow its raster

    def check_slide(self, pred=None):
        """Score the slide of ``pred`` (default: the panel's predictor) against the model's training
        sections in a worker (once per model and slide); returns the worker."""
        pred = pred or self.predictor
        m = self.model
        if pred is None or m is None or m.trust is None or self._ood_key == (id(m.trust), id(pred.pyr)):
            return None  # scored already (a copy of the model with the uncertainty on or off shares its calibration)
        self._ood_key = key = (id(m.trust), id(pred.pyr))
        self._ood_label.value = "comparing the slide with the training sections…"

        def done(res):
            if self._ood_key != key:  # another model or slide meanwhile
                return
            self.ood = res
            self._ood_label.value = f"slide vs training sections: {res['message']}"
            if res["outside"]:
                from napari.utils.notifications import show_warning

                show_warning(f"Predicted expression: {res['message']}")

        this = []

        def ended():
            if self._ood_worker is this[0]:
                self._ood_worker = None

        # the predictor's tissue mask is reused: the slide is not read again for it
        self._ood_worker = start_worker(slide_ood, m, pred.pyr, WINDOWS, (pred.mask, pred.mask_ds), returned=done,
                                        errored=self._fail, finished=ended)
        this.append(self._ood_worker)
        return self._ood_worker
