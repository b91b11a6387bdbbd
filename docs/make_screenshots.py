"""Make the docs' screenshots from real runs (needs a display: ``xvfb-run -a``).

    python docs/make_screenshots.py slide-spots [--gene ERBB2]
    python docs/make_screenshots.py her2st --model MODEL_DIR --data HER2ST_DIR [--section C2] [--gene ERBB2]
    python docs/make_screenshots.py segmenter --model SEG_DIR --section-dir DEMO_FOLDER
    python docs/make_screenshots.py slide-level --model SLIDE_MODEL_DIR [--map ERBB2] [--name NAME]
    python docs/make_screenshots.py qupath --model MODEL_DIR --data HER2ST_DIR [--section C5] [--gene ERBB2]

``slide-spots``: the "Slide & spots" panel on the built-in generated section (measured spots coloured
by a gene, colorbar). ``her2st``: a held-out HER2ST section (a folder with ``images/``, ``spots/``,
``counts/`` as published with the HER2ST study) with the model's predicted heatmap and
the measured spots of the same gene, plus the r table. ``segmenter``: the "Transcriptome segmenter"
panel on a generated section with a segmentation, drawn ground-truth regions and the Dice table.
``slide-level``: the "Slide-level" panel with a HE2RNA / G-HANet / multi-task model's heatmap over a
generated slide none of them was trained on. ``qupath``: on a HER2ST section the model did not see,
a QuPath export (regions with a hole and a two-part region) imported as drawn regions; the measured |
predicted side-by-side view; and the spots exported for QuPath, reopened as detections coloured by
their predicted value, with a gene-set score layer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def slide_spots(args) -> Path:
    import napari

    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.viewer_app import wait_for
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    demo = make_demo(Path(args.section_dir), size=1536, seed=1)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    panel = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Slide & spots")
    panel.configure(gene=args.gene)
    wait_for(panel.open(slide=str(demo.slide), spots=str(demo.spots)))
    viewer.reset_view()
    out = HERE / "images" / "slide_spots.png"
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()
    print(out)
    return out


def her2st(args) -> Path:
    import napari

    from napari_histoexpr.viewer_app import wait_for, wait_until
    from napari_histoexpr.widgets.expression_view import ExpressionPanel
    from napari_histoexpr.widgets.layers import find_layer
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    d = Path(args.data)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    sp = SlideSpotsWidget(viewer)
    viewer.window.add_dock_widget(sp, name="Slide & spots")
    sp.configure(gene=args.gene)
    wait_for(sp.open(slide=str(d / "images" / f"{args.section}.jpg"),
                     spots=str(d / "spots" / f"{args.section}_selection.tsv")))
    panel = ExpressionPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Predicted expression")
    panel.load_model(args.model, genes=[args.gene])
    viewer.reset_view()
    panel.predict_view()
    wait_until(lambda: not panel.busy, 900)
    wait_for(panel.compare_spots())
    wait_until(lambda: panel.spot_pred is not None, 600)
    resid = find_layer(viewer, f"resid:{args.gene}")
    if resid is not None:
        resid.visible = False
    spots = sp.spots_layer
    viewer.layers.move(viewer.layers.index(spots), len(viewer.layers))
    viewer.layers.selection.active = spots
    panel.update_table()
    out = HERE / "images" / f"her2st_{args.section}_{args.gene}.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(out, panel.table_rows())
    viewer.close()
    return out


def segmenter(args) -> Path:
    import napari

    from napari_histoexpr.datasets import make_demo
    from napari_histoexpr.viewer_app import wait_for, wait_until
    from napari_histoexpr.widgets.segmenter_panel import SegmenterPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    demo = make_demo(args.section_dir, size=2048, mpp=1.0, seed=14)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    sp = SlideSpotsWidget(viewer)
    wait_for(sp.open(slide=str(demo.slide), spots=str(demo.spots)))
    panel = SegmenterPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Transcriptome segmenter")
    panel.configure(genes="ERBB2,COL1A1,PTPRC")
    panel.show_classes()
    panel.load_model(args.model)
    wait_for(panel.segment(view=False))
    wait_until(lambda: not panel.busy, 600)
    gt = panel.truth_layer(create=True)
    # draw where a pathologist would: well inside a region of each planted class
    from scipy.ndimage import distance_transform_edt

    cm_path = next(demo.truth.glob("class_map_ds*.npy"))
    ds = float(cm_path.stem.split("_ds")[1])
    cm = np.load(cm_path)
    spots = []
    for k, cls in ((1, "ERBB2 high"), (2, "COL1A1 high"), (3, "PTPRC high")):
        dist = distance_transform_edt(cm == k)
        r, c = np.unravel_index(np.argmax(dist), dist.shape)
        spots.append(((r + 0.5) * ds, (c + 0.5) * ds, cls))
    for y, x, cls in spots:
        panel.configure(draw_class=cls)
        gt.add_polygons([np.array([[y - 150, x - 150], [y - 150, x + 150], [y + 150, x + 150], [y + 150, x - 150]],
                                  float)])
    for layer in viewer.layers:
        if layer.name == "transcriptome classes":
            layer.visible = False
    viewer.reset_view()
    out = HERE / "images" / "segmenter.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(out, panel.dice())
    viewer.close()
    return out


def slide_level(args) -> Path:
    import napari

    from napari_histoexpr.datasets import make_cohort
    from napari_histoexpr.slide_level.cohort import read_cohort
    from napari_histoexpr.viewer_app import wait_for, wait_until
    from napari_histoexpr.widgets.slide_level_panel import SlideLevelPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    slide = read_cohort(make_cohort(args.slide_dir, n_slides=1, size=2048, seed=321))[0].slide
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    wait_for(SlideSpotsWidget(viewer).open(slide=str(slide)))
    panel = SlideLevelPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Slide-level")
    panel.load_model(args.model)
    wait_for(panel.compute())
    wait_until(lambda: not panel.busy and panel.bag is not None, 600)
    if args.map:
        panel.show_map(args.map)
    viewer.reset_view()
    out = HERE / "images" / f"{args.name}.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(out, panel.summary)
    viewer.close()
    return out


def qupath(args) -> list[Path]:
    import json
    import tempfile

    import napari

    from napari_histoexpr.segment.annotations import sidecar_path
    from napari_histoexpr.viewer_app import wait_for, wait_until
    from napari_histoexpr.widgets.expression_view import ExpressionPanel
    from napari_histoexpr.widgets.qupath_panel import QuPathPanel
    from napari_histoexpr.widgets.slide_spots import SlideSpotsWidget

    d = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="histoexpr-qupath-"))
    image = work / f"{args.section}.jpg"  # a copy: the drawn-regions sidecar goes next to it
    image.write_bytes((d / "images" / f"{args.section}.jpg").read_bytes())
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    sp = SlideSpotsWidget(viewer)
    sp_dock = viewer.window.add_dock_widget(sp, name="Slide & spots")
    sp.configure(gene=args.gene)
    wait_for(sp.open(slide=str(image), spots=str(d / "spots" / f"{args.section}_selection.tsv"),
                     counts=str(d / "counts" / f"{args.section}.tsv.gz")))
    pyr = sp.session.slide()
    h, w = pyr.level0_shape
    sidecar_path(image).unlink(missing_ok=True)

    def box(x0, y0, x1, y1):
        pts = [[x0 * w, y0 * h], [x1 * w, y0 * h], [x1 * w, y1 * h], [x0 * w, y1 * h]]
        return pts + pts[:1]

    # what QuPath's File > Export objects as GeoJSON writes: a region with a hole, a two-part region
    export = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a1", "geometry": {"type": "Polygon", "coordinates": [
            box(0.30, 0.30, 0.62, 0.62), box(0.40, 0.40, 0.50, 0.50)]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "a2", "geometry": {"type": "MultiPolygon", "coordinates": [
            [box(0.66, 0.30, 0.80, 0.45)], [box(0.66, 0.52, 0.80, 0.66)]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [0, 150, 0]}}}]}
    src = work / "qupath_export.geojson"
    src.write_text(json.dumps(export))
    qp = QuPathPanel(viewer)
    qp_dock = viewer.window.add_dock_widget(qp, name="QuPath import / export")
    qp.configure(import_file=str(src))
    qp.import_geojson()
    sp.session.spots_layer.visible = False
    truth = viewer.layers["ground truth"]
    truth.edge_width = 40.0  # µm: visible at the whole-section zoom
    viewer.layers.selection.active = truth
    viewer.reset_view()
    outs = [HERE / "images" / "qupath_import.png"]
    viewer.screenshot(str(outs[-1]), canvas_only=False, flash=False)

    truth.visible = False
    sp.session.spots_layer.visible = True
    panel = ExpressionPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Predicted expression")
    panel.load_model(args.model, genes=[args.gene])
    panel.predict_view()
    wait_until(lambda: not panel.busy, 900)
    wait_for(panel.compare_spots())
    wait_until(lambda: panel.spot_pred is not None, 600)
    for dock in (sp_dock, qp_dock):  # a wide canvas for the two views
        viewer.window.remove_dock_widget(dock)
    viewer.window.resize(1800, 1000)
    panel.configure(display_gene=args.gene, side_by_side=True)
    viewer.reset_view()
    wait_until(lambda: not panel.busy, 600)
    outs.append(HERE / "images" / "side_by_side.png")
    viewer.screenshot(str(outs[-1]), canvas_only=False, flash=False)
    panel.configure(side_by_side=False)

    panel.configure(gene_set="ERBB2 amplicon")
    wait_until(lambda: not panel.busy, 600)
    spots_file = work / f"{args.section}.geojson"
    for ly in list(viewer.layers):
        if ly not in (sp.session.slide_layer, panel.score_layer()):
            ly.visible = False
    qp.export("spots: measured + predicted", spots_file)
    viewer.open(str(spots_file), plugin="napari-histoexpr")
    det = viewer.layers[-1]
    det.face_color = f"predicted: {args.gene}"
    det.face_colorbar.visible = True
    viewer.reset_view()
    outs.append(HERE / "images" / "qupath_export.png")
    viewer.screenshot(str(outs[-1]), canvas_only=False, flash=False)
    print(*outs, panel.table_rows())
    viewer.close()
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    ss = sub.add_parser("slide-spots")
    ss.add_argument("--gene", default="ERBB2")
    ss.add_argument("--section-dir", default="benchmark-output/slide-spots-section")
    h = sub.add_parser("her2st")
    h.add_argument("--model", required=True)
    h.add_argument("--data", required=True, help="the HER2ST data folder (images/, spots/, counts/)")
    h.add_argument("--section", default="C2")
    h.add_argument("--gene", default="ERBB2")
    s = sub.add_parser("segmenter")
    s.add_argument("--model", required=True)
    s.add_argument("--section-dir", default="benchmark-output/seg-section")
    sl = sub.add_parser("slide-level")
    sl.add_argument("--model", required=True)
    sl.add_argument("--map", default=None, help="gene or attention map to show (default: the first)")
    sl.add_argument("--name", default="slide_level")
    sl.add_argument("--slide-dir", default="benchmark-output/slide-level-slide")
    q = sub.add_parser("qupath")
    q.add_argument("--model", required=True)
    q.add_argument("--data", required=True, help="the HER2ST data folder (images/, spots/, counts/)")
    q.add_argument("--section", default="C5")
    q.add_argument("--gene", default="ERBB2")
    args = ap.parse_args(argv)
    {"slide-spots": slide_spots, "her2st": her2st, "segmenter": segmenter, "slide-level": slide_level,
     "qupath": qupath}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
