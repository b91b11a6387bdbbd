"""npe2 sample data: the built-in synthetic section (generated once, then cached)."""

from __future__ import annotations

from .datasets import CLASSES, default_demo_dir, make_demo
from .io.sections import open_section
from .layerdata import planted_classes_layer_data, slide_layer_data, spots_layer_data

#: side of the generated sample slide in pixels (0.5 µm/px)
DEMO_SIZE = 4096


def demo_layers(folder=None, gene: str = "ERBB2") -> list:
    """Slide, measured spots (coloured by ``gene``) and the planted class map (hidden)."""

    demo = make_demo(folder or default_demo_dir(), size=DEMO_SIZE)
    pyr, adata = open_section(demo.slide, demo.spots)
    truth = planted_classes_layer_data(demo, CLASSES, pyr.world_mpp)
    return [slide_layer_data(pyr, name="demo slide"), truth, spots_layer_data(adata, gene, "log1p", mpp=pyr.mpp)]


def make_demo_section():
    return demo_layers()
