"""`hpdm eval`: parse the options, run `hpdm_cli.drivers.evaluate.evaluate`, print the summary table.

Its progress lines and warnings go to stderr, the summary table to stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .console import err, log_line, warn_emulated_bf16
from .console import out as console
from .help_texts import (BF16_HELP, CONTEXT_GIB_HELP, DEVICE_HELP, GUIDANCE_HELP, GUIDANCE_INTERVAL_HELP,
                         GUIDE_MODEL_HELP, I3D_HELP, OVERLAP_HELP, SIGMA_MAX_HELP, STEPS_HELP)


def evaluate(
    ckpt: Path = typer.Option(..., "--ckpt", help="Run directory (newest checkpoint, EMA weights), checkpoint "
                                                 "directory or .safetensors file of a shapes model; packaged: the "
                                                 "packaged one."),
    out: Path = typer.Option(Path("eval"), "--out", help="Report folder: report.json and contact_sheet.png."),
    num_clips: Optional[int] = typer.Option(None, "--num-clips", "--num",
                                            help="Clips per side (generated, real, real floor; default: the recipe's "
                                                 "eval.num_clips)."),
    split: str = typer.Option("heldout", "--split", help="Real clips' split: heldout (prompts never trained on), "
                                                       "train or all."),
    batch: int = typer.Option(16, "--batch", help="Clips per sampler call."),
    steps: Optional[str] = typer.Option(None, "--steps", help=STEPS_HELP),
    guidance: Optional[str] = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help=GUIDE_MODEL_HELP),
    sigma_max: Optional[str] = typer.Option(None, "--sigma-max", help=SIGMA_MAX_HELP),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=OVERLAP_HELP),
    fvd: bool = typer.Option(True, "--fvd/--no-fvd", help="Also compute FVD (I3D) with floor and baselines."),
    i3d_weights: Optional[Path] = typer.Option(None, "--i3d-weights", "--i3d", help=I3D_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the network for sampling (worth it for "
                                                          "hundreds of clips on a GPU; compile time included)."),
    context_gib: Optional[float] = typer.Option(None, "--context-gib", help=CONTEXT_GIB_HELP),
):
    """Quality report of a shapes checkpoint: FVD with floor and baselines, prompt faithfulness, condition use."""
    from rich.table import Table

    from ..drivers.evaluate import evaluate as run_eval
    from ..drivers.evaluate import summary_rows
    warn_emulated_bf16(bf16, device)
    rep = run_eval(ckpt, out, num_clips=num_clips, split=split, batch=batch, guidance=guidance,
                   steps=steps, overlap=overlap, device=device, bf16=bf16, compile=compile, fvd=fvd,
                   i3d_weights=i3d_weights, context_gib=context_gib, guidance_interval=guidance_interval,
                   guide_model=guide_model, sigma_max=sigma_max,
                   log=lambda m: log_line(m, err))          # progress on stderr: stdout is the summary alone
    table = Table(title=f"hpdm eval: {rep['checkpoint']} (step {rep['step']}, N = {rep['num_clips']}, "
                        f"{rep['split']} prompts)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(rep):
        table.add_row(name, value)
    console.print(table)
    console.print(f"report: {Path(out) / 'report.json'}; contact sheet: {rep['contact_sheet']}")

