"""`hpdm bench`: parse the options, time with `hpdm_cli.drivers.bench.run_bench`, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .console import out


def bench(
    recipe: str = typer.Argument(..., help="Recipe file or packaged name."),
    overrides: Optional[List[str]] = typer.Argument(None, help="section.key=value overrides."),
    steps: Optional[int] = typer.Option(None, help="Timed training steps (default 10)."),
    warmup: Optional[int] = typer.Option(None, help="Untimed warm-up steps (default 3)."),
    batch: Optional[int] = typer.Option(None, help="Per-GPU batch (default: the recipe's global batch; "
                                                   "--sampling: 16 videos)."),
    ablations: bool = typer.Option(False, help="Also time no adaptive computation and shallow fusion."),
    precision: Optional[str] = typer.Option(None, help="Comma-separated precisions to time (fp32,tf32,bf16); "
                                                       "--sampling: one of them."),
    sampling: bool = typer.Option(False, "--sampling", help="Time hierarchical sampling instead of training."),
    overlap: Optional[str] = typer.Option(None, help="Sampling: comma-separated overlap settings (fhw,hw,...,none)."),
    compare_cache: bool = typer.Option(True, "--compare-cache/--cache-only", help="Sampling: also time without caching."),
    sample_steps: Optional[str] = typer.Option(None, help="Sampling: per-level steps actually run, e.g. 8,4,2."),
    compile: bool = typer.Option(False, "--compile", help="Sampling: torch.compile the network (compile time "
                                                          "reported apart)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
):
    """Training throughput, peak memory, counted FLOPs and MFU (synthetic inputs); --sampling times generation."""
    from rich.table import Table

    from ..drivers.bench import run_bench
    rows = run_bench(recipe, overrides or [], sampling=sampling, steps=steps, warmup=warmup, batch=batch,
                     ablations=ablations, precision=precision, overlap=overlap, compare_cache=compare_cache,
                     sample_steps=sample_steps, compile=compile, json_out=json_out)
    table = Table(title="hpdm bench: sampling (seconds per video)" if sampling else "hpdm bench: training")
    table.add_column("")
    for i in range(len(rows)):
        table.add_column(str(i + 1), justify="right")
    for key in rows[0]:
        table.add_row(key, *[f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key]) for r in rows])
    out.print(table)
