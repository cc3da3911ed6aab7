"""`hpdm eval-fvd`: parse the options, call the driver `hpdm_cli.drivers.fvd.run_eval_fvd`, print the result.

Warnings and progress go to stderr, the result table to stdout; the driver writes the full
result to `--json OUT.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import EVAL_CPU_BATCH, EvalConfig
from .console import err, log_line, out, warn_emulated_bf16
from .progress import PROGRESS_HELP, bars_wanted, keyed_bars
from .help_texts import (BF16_HELP, DEVICE_HELP, GUIDANCE_HELP, GUIDANCE_INTERVAL_HELP, GUIDE_MODEL_HELP, I3D_HELP,
                         OVERLAP_HELP, SIGMA_MAX_HELP, STEPS_HELP)


def _for_checkpoint(text: str) -> str:
    """An option's help, marked as applying only when --fake is a checkpoint (its first word lower-cased unless it is
    a metavariable such as LO,HI)."""
    first = text.split(maxsplit=1)[0]
    return "Checkpoint --fake: " + (text if len(first) > 1 and first.isupper() else text[0].lower() + text[1:])


def eval_fvd(
    real: Path = typer.Option(..., "--real", help="Real videos: a folder of videos (searched recursively), a "
                                                  "prepared dataset, or a statistics file (.npz)."),
    fake: Path = typer.Option(..., "--fake", help="Fake videos: a folder, a prepared dataset, a statistics file, "
                                                  "or a checkpoint / run directory / `packaged` (clips are generated)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result (FVD, counts, protocol, "
                                                                 "detector checksum, sources) as JSON."),
    num: Optional[int] = typer.Option(None, "--num", "--num-clips",
                                      help=f"Clips per side (default {EvalConfig.num_clips}, or a checkpoint --fake's "
                                           "eval.num_clips; a statistics file holds what it holds)."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Frames per clip (>= 9) or 'all' (default "
                                                               f"{EvalConfig.frames}, or that of a statistics-file "
                                                               "side, or a checkpoint --fake's eval.frames)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Take every N-th frame (default 1, or that of a "
                                                               "statistics-file side)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Selection seed: which videos are taken (default 0; "
                                                            "see the protocol)."),
    i3d: Optional[Path] = typer.Option(None, "--i3d", "--i3d-weights", help=I3D_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch: Optional[int] = typer.Option(None, "--batch", help=f"Clips per I3D batch (default {EvalConfig.batch_size} "
                                                              "on GPU, or a checkpoint --fake's eval.batch_size; "
                                                              f"{EVAL_CPU_BATCH} on CPU)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding threads (default min(8, CPUs); 0 = "
                                                                 "decode in the main thread)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (reference, default) or tf32 "
                                                                      "(faster on GPUs, slightly different)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache the real side's statistics."),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir",
        help="Statistics cache (default $HPDM_CACHE_DIR, else $XDG_CACHE_HOME/hpdm/fvd, else ~/.cache/hpdm/fvd)."),
    save_real: Optional[Path] = typer.Option(None, "--save-real", help="Also write the real statistics (.npz)."),
    save_fake: Optional[Path] = typer.Option(None, "--save-fake", help="Also write the fake statistics (.npz)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Checkpoint --fake: the dataset whose labels / "
                                                             "captions condition the clips (default: --real if it "
                                                             "is a dataset, else the recipe's data.path)."),
    gen_seed: Optional[int] = typer.Option(None, "--gen-seed", help="Checkpoint --fake: first seed (seeds "
                                                                    "N..N+num-1; default 0)."),
    gen_batch: Optional[int] = typer.Option(None, "--gen-batch", help="Checkpoint --fake: videos per sampler call "
                                                                      "(default sample.batch_size)."),
    steps: Optional[str] = typer.Option(None, "--steps", help=_for_checkpoint(STEPS_HELP)),
    guidance: Optional[str] = typer.Option(None, "--guidance", help=_for_checkpoint(GUIDANCE_HELP)),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval",
                                                    help=_for_checkpoint(GUIDANCE_INTERVAL_HELP)),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help=_for_checkpoint(GUIDE_MODEL_HELP)),
    sigma_max: Optional[str] = typer.Option(None, "--sigma-max", help=_for_checkpoint(SIGMA_MAX_HELP)),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=_for_checkpoint(OVERLAP_HELP)),
    bf16: bool = typer.Option(False, "--bf16", help=_for_checkpoint(BF16_HELP)),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Fréchet Video Distance (I3D Kinetics-400 logits) between real and fake videos (protocol: README.md, "FVD protocol")."""
    from ..drivers.fvd import run_eval_fvd
    warn_emulated_bf16(bf16, device)
    live = bars_wanted(progress)
    with keyed_bars(lambda side: f"{side} clips", live, lines=True) as bar:
        res = run_eval_fvd(real, fake, json_out=json_out, data=data, gen_seed=gen_seed, gen_batch=gen_batch,
                           steps=steps, guidance=guidance, guidance_interval=guidance_interval,
                           guide_model=guide_model, sigma_max=sigma_max, overlap=overlap, bf16=bf16, num=num,
                           frames=frames, stride=stride, seed=seed, i3d=i3d, device=device, batch_size=batch, workers=workers,
                           precision=precision, cache=cache, cache_dir=cache_dir, save_real=save_real,
                           save_fake=save_fake, progress=bar,
                           log=lambda m: log_line(m, err))
    _print_result(res, json_out, save_real, save_fake)


def _how(side) -> str:
    """Where a side's statistics came from, for the table."""
    if side.kind == "stats":
        return "read from the file"
    if side.cache == "hit":
        return f"cache hit ({side.cache_path})"
    return f"computed in {side.seconds:.1f} s ({side.clips_per_second:.2f} clips/s)" + (
        f", cached to {side.cache_path}" if side.cache == "miss (written)" else "")


def _print_result(res, json_out: Optional[Path], save_real: Optional[Path] = None,
                  save_fake: Optional[Path] = None) -> None:
    """The sides table, the protocol, the detector and the FVD on stdout, then the files written."""
    from rich.table import Table
    table = Table(title="hpdm eval-fvd")
    for col in ("", "real", "fake"):
        table.add_column(col, overflow="fold")
    sides = (res.real, res.fake)
    table.add_row("source", *[f"{s.kind}: {s.path}" for s in sides])
    table.add_row("clips", *[f"{s.num} of {s.num_requested} requested" if s.kind != "stats" else str(s.num)
                             for s in sides])
    table.add_row("skipped: short", *[str(s.num_short) for s in sides])
    table.add_row("skipped: unreadable", *[str(s.num_unreadable) for s in sides])
    table.add_row("statistics", *[_how(s) for s in sides])
    out.print(table)
    p = res.protocol
    out.print(f"protocol v{p['protocol_version']} ({p['decode']} decoding): {p['clip']}; {p['resize']}; scaled "
              f"{p['scale']}; {p['precision']}; selection seed {p['selection_seed']}", highlight=False, markup=False)
    out.print(f"detector: {p['features']}, sha256 {res.detector_sha256}", highlight=False)
    out.print(f"FVD = {res.fvd:.4f}", highlight=False)
    for path in (json_out, save_real, save_fake):
        if path is not None:
            out.print(f"wrote {path}", highlight=False)

