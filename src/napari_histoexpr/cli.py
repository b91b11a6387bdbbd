"""``histoexpr`` command line: batch work over the same headless core as the napari plugin.

Every command prints progress to stderr and exits non-zero with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import HistoExprError


def _progress(msg: str) -> None:
    print(f"[histoexpr] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    """Describe a slide and/or spot data (and check that they align)."""
    from .io.session import open_steps

    gen = open_steps(args.slide, args.spots, args.counts, args.clusters, args.mpp)
    try:
        while True:
            _progress(next(gen))
    except StopIteration as stop:
        pyr, adata = stop.value
    out: dict = {}
    if pyr is not None:
        out["slide"] = {
            "path": pyr.path, "backend": pyr.backend, "width": pyr.level0_shape[1],
            "height": pyr.level0_shape[0], "levels": pyr.n_levels,
            "downsamples": [round(d, 4) for d in pyr.downsamples], "tile_size": list(pyr.tile_size),
            "mpp": pyr.mpp, "mpp_source": pyr.mpp_source, "icc_applied": pyr.icc_applied,
        }
    if adata is not None:
        info = adata.uns["histoexpr"]
        out["spots"] = {
            "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
            "platform": info.get("platform"), "spot_diameter_px": info.get("spot_diameter_px"),
            "mpp": info.get("mpp"), "mpp_source": info.get("mpp_source"),
        }
        if args.gene:
            from .io.spots import gene_values

            v = gene_values(adata, args.gene, args.mode)
            out["spots"]["gene"] = {"name": args.gene, "mode": args.mode, "mean": float(v.mean()),
                                    "max": float(v.max())}
    print(json.dumps(out, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Generate the built-in section and show it (or, headless, write a screenshot)."""
    from .data.synthetic import make_demo

    out = Path(args.out)
    _progress(f"generating the synthetic section in {out} (cached after the first run)")
    demo = make_demo(out, size=args.size, seed=args.seed)
    _progress(f"slide {demo.slide}, spots {demo.spots}")
    headless = args.screenshot is not None or not os.environ.get("DISPLAY")
    screenshot = Path(args.screenshot) if args.screenshot else out / "demo.png"
    from .viewer_app import show_demo

    path = show_demo(demo, screenshot=screenshot if headless else None, gene=args.gene,
                     progress=_progress)
    if path is not None:
        _progress(f"screenshot written: {path}")
        print(path)
    return 0


# -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="histoexpr", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"napari-histoexpr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate the synthetic section and open it in napari")
    d.add_argument("--out", default="demo-output", help="output folder (default: ./demo-output)")
    d.add_argument("--size", type=int, default=4096, help="slide side in pixels (default 4096)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gene", default="ERBB2", help="gene to colour the spots by")
    d.add_argument("--screenshot", default=None,
                   help="write a PNG screenshot here and exit (default when no display)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="describe a slide and/or spot data and check they align")
    i.add_argument("--slide", default=None)
    i.add_argument("--spots", default=None, help="Space Ranger outs folder, .h5ad or ST *_selection.tsv")
    i.add_argument("--counts", default=None, help="legacy ST counts TSV")
    i.add_argument("--clusters", default=None, help="per-spot labels TSV/CSV with a 'label' column")
    i.add_argument("--mpp", type=float, default=None, help="override µm per level-0 pixel")
    i.add_argument("--gene", default=None)
    i.add_argument("--mode", default="log1p", choices=["raw", "log1p", "normalised"])
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info" and not (args.slide or args.spots):
        parser.error("info needs --slide and/or --spots")
    try:
        return int(args.func(args) or 0)
    except HistoExprError as e:
        print(f"histoexpr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("histoexpr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
