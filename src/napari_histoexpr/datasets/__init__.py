"""Generated data with planted, known ground truth, written as real files (as ``squidpy.datasets`` offers
its sample data): a section (pyramidal TIFF + Space Ranger folder), a Visium HD run, a cohort of slides
with bulk expression and survival. The demo, sample data, tests and benchmarks use it; nothing in the
core imports it.

- :func:`make_demo`: a slide + Visium spots whose marker genes follow the tissue class under each spot
- :func:`make_visium_hd`: a Visium HD run (``binned_outputs/square_XXXum``)
- :func:`make_cohort`: slides, bulk counts and survival for the slide-level models
- :class:`SyntheticTissue`: the procedural tissue itself, rendered at any window and downsample
"""

from .builders import DemoData, default_demo_dir, demo_tissue, make_cohort, make_demo, make_visium_hd
from .tissue import (
    CLASSES,
    HOUSEKEEPING,
    PLANTED_GENES,
    SyntheticTissue,
    gene_names,
    planted_expression,
    planted_profiles,
    simulate_counts,
    spot_fractions,
    visium_grid,
)
from .writers import write_10x_h5, write_mtx_folder, write_pyramidal_tiff

__all__ = ["CLASSES", "HOUSEKEEPING", "PLANTED_GENES", "DemoData", "SyntheticTissue", "default_demo_dir",
           "demo_tissue", "gene_names", "make_cohort", "make_demo", "make_visium_hd", "planted_expression",
           "planted_profiles", "simulate_counts", "spot_fractions", "visium_grid", "write_10x_h5",
           "write_mtx_folder", "write_pyramidal_tiff"]
