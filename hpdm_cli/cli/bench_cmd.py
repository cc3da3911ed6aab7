"""`hpdm bench`: parse the options, time with `hpdm_cli.drivers.bench.run_bench`, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import BENCH_SAMPLING_BATCH, BENCH_SAMPLING_PRECISION, BENCH_STEPS, BENCH_WARMUP, TILE_BATCH
from ..recipe import available_recipes
from .console import err, out, rank0_warn


def bench(
    recipe: str = typer.Argument(..., metavar="RECIPE",
                                 help=f"Recipe file or packaged name ({', '.join(available_recipes())})."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="OVERRIDES", help="section.key=value overrides."),
    steps: Optional[int] = typer.Option(None, help=f"Timed training steps (default {BENCH_STEPS})."),
    warmup: Optional[int] = typer.Option(None, help=f"Untimed warm-up steps (default {BENCH_WARMUP})."),
    batch: Optional[int] = typer.Option(None, help="Per-GPU batch (default: the recipe's global batch; "
                                                   f"--sampling: {BENCH_SAMPLING_BATCH} videos)."),
    ablations: bool = typer.Option(False, help="Also time the paper's Table 2 ablations: no adaptive computation, "
                                                "shallow fusion, context detach, no coordinates."),
    precision: Optional[str] = typer.Option(None, help="Comma-separated precisions to time (fp32,tf32,bf16; "
                                                       "default: the recipe's train.precision); --sampling: one "
                                                       f"of them (default {BENCH_SAMPLING_PRECISION})."),
    sampling: bool = typer.Option(False, "--sampling", help="Time hierarchical sampling instead of training."),
    overlap: Optional[str] = typer.Option(None, help="Sampling: comma-separated overlap settings "
                                                     "(fhw,hw,...,none,shift-hw; default: the recipe's "
                                                     "pyramid.overlap)."),
    compare_cache: bool = typer.Option(True, "--compare-cache/--cache-only", help="Sampling: also time without caching."),
    sample_steps: Optional[str] = typer.Option(None, help="Sampling: per-level steps actually run, e.g. 8,4,2, or one "
                                                                    "count halved per level as sample --steps "
                                                                    "(default: the recipe's; the full-step time "
                                                                    "is extrapolated from fewer)."),
    compile: bool = typer.Option(False, "--compile", help="Sampling: torch.compile the network (compile time "
                                                          "reported apart)."),
    tile_batch: Optional[str] = typer.Option(None, "--tile-batch", help="Sampling: comma-separated tiles per "
                                             f"network forward to time (default {TILE_BATCH})."),
    memory_chart: Optional[Path] = typer.Option(None, "--memory-chart", help="Instead: training peak memory "
                                                "against output resolution (batch 1, bf16), up to out-of-memory, "
                                                "drawn into this PNG."),
    resolutions: Optional[str] = typer.Option(None, help="--memory-chart: comma-separated FxHxW sizes (default "
                                                         "16x64x64 ... 256x1024x1024)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="--memory-chart: also measure "
                                  "video-diffusion-pytorch's Unet3D on whole videos (hpdm's bench extra)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
):
    """Training throughput, peak memory, counted FLOPs and MFU (synthetic inputs); --sampling times generation."""
    from rich.table import Table

    from ..drivers.bench import check_memory_chart_options, run_bench
    check_memory_chart_options(memory_chart is not None, resolutions=resolutions, baseline=baseline, steps=steps,
                               warmup=warmup, batch=batch, ablations=ablations, precision=precision,
                               sampling=sampling, overlap=overlap, compare_cache=compare_cache,
                               sample_steps=sample_steps, compile=compile, tile_batch=tile_batch)
    if memory_chart is not None:
        from ..drivers.memory_chart import run_memory_chart
        run_memory_chart(recipe, overrides or [], memory_chart, json_out=json_out, resolutions=resolutions,
                         baseline=baseline, log=out.print)
        out.print(f"wrote {memory_chart}" + (f" and {json_out}" if json_out else ""))
        return
    rows = run_bench(recipe, overrides or [], sampling=sampling, steps=steps, warmup=warmup, batch=batch,
                     ablations=ablations, precision=precision, overlap=overlap, compare_cache=compare_cache,
                     sample_steps=sample_steps, compile=compile, tile_batch=tile_batch, json_out=json_out,
                     warn=rank0_warn, log=lambda m: err.print(m, highlight=False, markup=False))
    table = Table(title="hpdm bench: sampling (seconds per video)" if sampling else "hpdm bench: training")
    table.add_column("")
    for i in range(len(rows)):
        table.add_column(str(i + 1), justify="right")
    for key in rows[0]:
        table.add_row(key, *[f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key]) for r in rows])
    out.print(table)
