"""The "Slide & spots" dock panel: open a slide and its measured spots, colour spots by a gene."""

from __future__ import annotations

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)

from ..data.gene_values import VALUE_MODES
from ..errors import UnknownGeneError
from ..io.sections import N_OPEN_STEPS, open_steps
from ..io.visium_hd import DEFAULT_BIN_UM
from ..layerdata import spots_layer_data
from ._common import PanelMixin, notify_error, start_worker
from ._session import Session

HD_BINS = (2, 8, 16)  # Space Ranger's Visium HD bin sizes (µm)

COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "cividis", "gray")


class SlideSpotsWidget(PanelMixin, Container):
    """Open a slide + spots off the GUI thread; pick a gene with completion; set value mode/contrast."""

    SETTINGS = {"slide": "_slide_edit", "spots": "_spots_edit", "counts": "_counts_edit", "mpp": "_mpp",
                "bin_um": "_bin",
                "gene": "_gene", "mode": "_mode", "low_percentile": "_lo", "high_percentile": "_hi",
                "colormap": "_cmap"}

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self.session = Session(viewer)
        self.slide = None
        self.adata = None
        self._worker = None
        self._slide_edit = FileEdit(label="slide", mode="r", nullable=True, filter="*.svs *.tif *.tiff *.ndpi *.mrxs "
                                    "*.scn *.bif *.vms *.svslide *.dcm *.jpg *.jpeg *.png")
        self._spots_edit = FileEdit(label="spots", mode="r", nullable=True,
                                    filter="*.h5 *.h5ad *.tsv *.tsv.gz *.csv *.json")
        self._spots_edit.tooltip = ("Space Ranger: pick filtered_feature_bc_matrix.h5 or "
                                    "scalefactors_json.json in outs/ (Visium HD: the outs folder); legacy ST: "
                                    "*_selection.tsv or a counts TSV with XxY ids; or an .h5ad with obsm['spatial']")
        self._counts_edit = FileEdit(label="ST counts", mode="r", nullable=True, filter="*.tsv *.tsv.gz")
        self._counts_edit.tooltip = "Legacy ST only: spots x genes counts TSV (found automatically in a HER2ST layout)"
        self._mpp = FloatSpinBox(label="µm/px (0 = auto)", value=0.0, min=0.0, max=100.0, step=0.01)
        self._bin = ComboBox(label="HD bin µm", choices=list(HD_BINS), value=DEFAULT_BIN_UM)
        self._bin.tooltip = "Visium HD only: which bin size of binned_outputs/ to open"
        self._open_btn = PushButton(text="Open")
        self._gene = LineEdit(label="gene")
        self._gene.tooltip = "Type a gene name (completion over all genes), Enter to apply"
        self._mode = ComboBox(label="values", choices=list(VALUE_MODES), value="log1p")
        self._lo = FloatSpinBox(label="low %", value=1.0, min=0.0, max=100.0, step=0.5)
        self._hi = FloatSpinBox(label="high %", value=99.0, min=0.0, max=100.0, step=0.5)
        self._cmap = ComboBox(label="colormap", choices=list(COLORMAPS), value="viridis")
        self._status = Label(value="Open a slide and/or its spots.")
        super().__init__(widgets=[
            self._slide_edit, self._spots_edit, self._counts_edit, self._mpp, self._bin, self._open_btn,
            self._gene, self._mode, self._lo, self._hi, self._cmap, self._status,
        ])
        self._completer = None
        self._open_btn.changed.connect(self.open)
        self._gene.native.returnPressed.connect(self.apply_gene)
        self._mode.changed.connect(self.apply_gene)
        self._lo.changed.connect(self.apply_gene)
        self._hi.changed.connect(self.apply_gene)
        self._cmap.changed.connect(self.apply_gene)

    # -- opening -----------------------------------------------------------------------------------
    @staticmethod
    def _path(edit: FileEdit) -> str | None:
        v = str(edit.value or "").strip()
        return v if v and v != "." else None

    def open(self, slide: str | None = None, spots: str | None = None, counts: str | None = None,
             mpp: float | None = None):
        """Open in a worker thread; returns the worker (already started)."""
        if isinstance(slide, bool):  # called from the button's `changed(bool)` signal
            slide = None
        slide = slide or self._path(self._slide_edit)
        spots = spots or self._path(self._spots_edit)
        counts = counts or self._path(self._counts_edit)
        mpp = mpp if mpp is not None else (self._mpp.value or None)
        for edit, value in ((self._slide_edit, slide), (self._spots_edit, spots),
                            (self._counts_edit, counts)):
            if value and str(edit.value) != str(value):
                edit.value = value
        if not slide and not spots:
            notify_error("Slide & spots: choose a slide and/or spot data first")
            return None
        self._open_btn.enabled = False
        self._status.value = "opening…"
        # the default size is a preference (a run without it opens its nearest size, with a notification);
        # another size chosen is asked for exactly
        bin_um = None if int(self._bin.value) == DEFAULT_BIN_UM else float(self._bin.value)
        self._pending = {"image": slide, "spots": spots, "counts": counts, "mpp": mpp, "bin_um": bin_um}
        self._worker = start_worker(
            open_steps, slide, spots, counts, None, mpp, bin_um, desc="Opening slide & spots", total=N_OPEN_STEPS,
            yielded=self._on_step, returned=self._on_opened, errored=self._on_error,
            finished=self._on_finished)
        return self._worker

    def _on_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self._open_btn.enabled = True

    def _on_step(self, msg: str) -> None:
        self._status.value = msg

    def _on_error(self, exc: Exception) -> None:
        self._fail(exc)

    def _on_opened(self, result) -> None:
        pyr, adata = result
        self.slide, self.adata = pyr, adata
        viewer = self._viewer
        if pyr is not None:
            self.session.show_slide(pyr, getattr(self, "_pending", None))  # the section, for the other panels
            viewer.canvas.overlays.scale_bar.visible = True
        if adata is not None:
            self._set_completer(list(map(str, adata.var_names)))
            if not self._gene.value or self._gene.value not in adata.var_names:
                from ..data.gene_values import top_genes

                self._gene.value = top_genes(adata, 1)[0]
            self.apply_gene()
            viewer.tooltip.visible = True
        viewer.reset_view()
        parts = []
        if pyr is not None:
            parts.append(f"{pyr.name}: {pyr.level0_shape[1]}x{pyr.level0_shape[0]} px, "
                         f"{pyr.n_levels} levels, "
                         + (f"{pyr.mpp:.3f} µm/px ({pyr.mpp_source})" if pyr.mpp else "µm/px unknown"))
        if adata is not None:
            parts.append(f"{adata.n_obs} spots x {adata.n_vars} genes")
            info = adata.uns["histoexpr"]
            if info.get("bins_available"):
                parts.append(f"Visium HD bins found: {', '.join(f'{b:g} µm' for b in info['bins_available'])}; "
                             f"showing {info['bin_um']:g} µm")
            for key in ("warning", "bin_note"):
                if info.get(key):
                    from napari.utils.notifications import show_warning

                    parts.append(info[key])
                    show_warning(info[key])
        self._status.value = "\n".join(parts)

    def _set_completer(self, genes: list[str]) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QCompleter

        comp = QCompleter(sorted(genes), self._gene.native)
        comp.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        comp.setFilterMode(Qt.MatchFlag.MatchContains)
        comp.activated.connect(lambda _text: self.apply_gene())
        self._gene.native.setCompleter(comp)
        self._completer = comp

    def gene_completions(self, text: str) -> list[str]:
        """What the gene field's completer offers for ``text`` (case-insensitive, "contains")."""
        if self._completer is None:
            return []
        self._completer.setCompletionPrefix(text)
        model = self._completer.completionModel()
        return [model.index(i, 0).data() for i in range(model.rowCount())]

    # -- colouring ---------------------------------------------------------------------------------
    @property
    def spots_layer(self):
        return self.session.spots_layer

    @property
    def slide_layer(self):
        return self.session.slide_layer

    def set_gene(self, gene: str):
        """Colour the spots by ``gene`` (as typing it and pressing Enter)."""
        self._gene.value = gene
        return self.apply_gene()

    def apply_gene(self, *_):
        """Colour the spots by the chosen gene/mode/contrast; unknown genes give a warning."""
        if self.adata is None:
            return None
        gene = (self._gene.value or "").strip()
        if not gene:
            return None
        lo, hi = float(self._lo.value), float(self._hi.value)
        if hi <= lo:
            hi = min(100.0, lo + 1.0)
        try:
            ld = spots_layer_data(self.adata, gene, self._mode.value, mpp=self.slide.mpp if self.slide else None,
                                  percentiles=(lo, hi), colormap=self._cmap.value)
        except UnknownGeneError as e:
            from napari.utils.notifications import show_warning

            self._status.value = str(e)
            show_warning(str(e))
            return None
        layer = self.session.show_spots(self.adata, ld)
        layer.face_colorbar.visible = True
        return layer
