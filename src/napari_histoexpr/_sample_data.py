"""npe2 sample data: the built-in synthetic section (generated once, then cached)."""

from __future__ import annotations

import numpy as np

#: side of the generated sample slide in pixels (0.5 µm/px)
DEMO_SIZE = 4096


def demo_layers(folder=None, gene: str = "ERBB2") -> list:
    """Slide, measured spots (coloured by ``gene``) and the planted class map (hidden)."""
    from .data.synthetic import CLASSES, default_demo_dir, make_demo
    from .io.manifest import harmonise_mpp
    from .io.slides import open_slide
    from .io.spots import read_spots, spots_layer_data

    demo = make_demo(folder or default_demo_dir(), size=DEMO_SIZE)
    pyr = open_slide(demo.slide)
    adata = read_spots(demo.spots)
    harmonise_mpp(pyr, adata)
    cm_path = next(demo.truth.glob("class_map_ds*.npy"))
    ds = float(cm_path.stem.split("_ds")[1])
    classes = np.load(cm_path)
    s = ds * pyr.world_mpp
    t = (ds - 1) / 2 * pyr.world_mpp
    truth = (classes, {"name": "planted classes", "scale": (s, s), "translate": (t, t),
                       "visible": False, "opacity": 0.4, "units": "µm",
                       "metadata": {"histoexpr": {"kind": "truth", "classes": list(CLASSES)}}}, "labels")
    return [pyr.layer_data(name="demo slide"), truth, spots_layer_data(adata, gene, "log1p", mpp=pyr.mpp)]


def make_demo_section():
    return demo_layers()
