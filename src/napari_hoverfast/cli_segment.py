"""``napari-hoverfast segment``: drain the pipeline with a tqdm bar, then write GeoJSON (and CSV)."""

from __future__ import annotations

import argparse
import sys

from .cli import CliError


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.default_model import load_model
    from .core.export import check_writable, export_nuclei
    from .core.pipeline import NucleusBatch, Progress, RunOptions, segment_slide
    from .core.slide import Slide
    from .core.tiling import Box

    name = args.output.name.lower()
    if not (name.endswith(".geojson") or name.endswith(".geojson.gz") or name.endswith(".json")):
        raise CliError(f"output must end in .geojson or .geojson.gz, got {args.output.name}")
    check_writable(args.output)
    if args.csv is not None:
        check_writable(args.csv)
    options = RunOptions(
        batch_size=args.batch_size, stain=args.stain, min_area_um2=args.min_area, workers=args.workers
    )
    with Slide(args.input, mpp=args.mpp) as slide:
        model = load_model(args.model, device=args.device)
        regions = [Box(*args.roi)] if args.roi else None
        tissue = None
        if regions is None and slide.level_count == 1 and max(slide.dimensions) <= 8192 and args.tissue_mask is None:
            regions = [Box(0, 0, *slide.dimensions)]  # a plain image or small scan: all of it
        elif regions is None:
            from .core import tissue as tissue_mod

            tissue = (
                tissue_mod.mask_from_image(args.tissue_mask, slide.dimensions)
                if args.tissue_mask is not None
                else tissue_mod.tissue_mask(slide)
            )
        run = segment_slide(slide, model, regions, options, tissue=tissue)
        with tqdm(total=0, unit="tile", dynamic_ncols=True, file=sys.stderr) as bar:
            while True:
                try:
                    event = next(run)
                except StopIteration as stop:
                    result = stop.value
                    break
                if isinstance(event, Progress):
                    bar.total = event.tiles_total
                    bar.n = event.tiles_done
                    bar.set_postfix(nuclei=event.nuclei)
                    bar.refresh()
                elif isinstance(event, NucleusBatch):
                    pass
    written = export_nuclei(result.nuclei, args.output, csv_path=args.csv, parameters=result.parameters)
    print(
        f"{len(result.nuclei)} nuclei in {len(result.tiles_done)}/{len(result.tiles)} tiles, "
        f"{result.seconds:.1f} s; wrote {', '.join(str(p) for p in written)}"
    )
    if result.error:
        raise CliError(f"run stopped early ({result.error}); the nuclei found so far were written")
    return 0
