"""`hpdm sample`: parse the options, generate with `hpdm_cli.drivers.sample.generate`, print what was written.

Progress bars go to stderr (rank 0 only under torchrun), results to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import TILE_BATCH
from .console import is_main_rank, rank0_warn, warn_emulated_bf16
from .console import out as console
from .help_texts import (BF16_HELP, COMPILE_HELP, CONTEXT_GIB_HELP, DEVICE_HELP, GUIDANCE_HELP, GUIDANCE_INTERVAL_HELP,
                         GUIDE_MODEL_HELP, OVERLAP_HELP, PROMPT_EMBEDDING_HELP, PROMPT_TABLE_HELP, SIGMA_MAX_HELP,
                         STEPS_HELP)
from .progress import PROGRESS_HELP, bars_wanted, keyed_bars


def sample(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Run directory (newest checkpoint, EMA weights), "
                                        "checkpoint directory, .safetensors file or packaged. Default: the "
                                        "packaged shapes text-to-video model (hpdm_cli/assets/MODEL_CARD.md), with "
                                        "the sampling steps and guidance stored with it; unless --overlap is given, "
                                        "no overlap on a CPU and shift-fhw on a GPU (any other device), and on "
                                        "a CPU too for a prompt that names no background."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (text models); for a class model a "
                                                               "prompt that is, or contains, one class's name (case, "
                                                               "punctuation and a leading article aside) is "
                                                               "accepted."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class name or id (class models). Without "
                                                             "--class/--prompt: the null condition (unconditional)."),
    prompt_table: Optional[Path] = typer.Option(None, "--prompt-table", help=PROMPT_TABLE_HELP),
    prompt_embedding: Optional[Path] = typer.Option(None, "--prompt-embedding", help=PROMPT_EMBEDDING_HELP),
    seeds: str = typer.Option("0", "--seeds", help="Seeds: 0-7, 1,5,9, 3 or mixes like 0-3,8; one video per seed."),
    out: Path = typer.Option(Path("clip.mp4"), "--out", help="Output video (.mp4 H.264; also "
                                                            ".m4v/.mov/.mkv/.gif/.png). Several seeds: one file per "
                                                            "seed, clip-seed0003.mp4."),
    gif: bool = typer.Option(False, "--gif", help="Also write a GIF next to each video."),
    png: bool = typer.Option(False, "--png", help="Also write a PNG strip of all frames next to each video."),
    levels: Optional[int] = typer.Option(None, "--levels", help="Index of the last level to generate: 0 = only "
                                         "level 0 (a low-resolution preview, same duration); default: all."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Seeds per sampler call (default: sample.batch_size)."),
    steps: Optional[str] = typer.Option(None, "--steps", help=STEPS_HELP),
    guidance: Optional[str] = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help=GUIDE_MODEL_HELP),
    sigma_max: Optional[str] = typer.Option(None, "--sigma-max", help=SIGMA_MAX_HELP),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=OVERLAP_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute lower levels' activations at every step "
                                                           "instead of caching them (same video, slower)."),
    offload: bool = typer.Option(False, "--offload", help="Keep the activation cache in (pinned) CPU memory."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of the full video (default: sample.fps, "
                                                           "else data.fps)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    tile_batch: int = typer.Option(TILE_BATCH, "--tile-batch", help="Tiles per network forward."),
    context_gib: Optional[float] = typer.Option(None, "--context-gib", help=CONTEXT_GIB_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Generate videos from the packaged model or a checkpoint: `hpdm sample --prompt "a red circle moving right on a gray background"`.

    Without --ckpt the packaged text-to-video shapes model draws the prompt (into clip.mp4).

    --ckpt takes a run, checkpoint or weights file: `hpdm sample --ckpt runs/tiny --class 0 --seeds 0-3`.

    Under torchrun the seeds are split across ranks; each rank writes its own seeds' files.
    """
    from ..drivers.sample import generate
    warn_emulated_bf16(bf16, device)
    show = bars_wanted(progress) and is_main_rank()
    with keyed_bars(lambda level: f"level {level}", show, lines=is_main_rank()) as bar:
        rep = generate(ckpt, out, seeds=seeds, prompt=prompt, class_=class_, levels=levels, batch=batch, steps=steps,
                       guidance=guidance, overlap=overlap, cache=not no_cache, offload=offload, fps=fps, device=device,
                       gif=gif, png=png, tile_batch=tile_batch, bf16=bf16, compile=compile, progress=bar,
                       warn=rank0_warn, prompt_table=prompt_table, prompt_embedding=prompt_embedding,
                       context_gib=context_gib, guidance_interval=guidance_interval, guide_model=guide_model,
                       sigma_max=sigma_max,
                       on_file=lambda p, replaced: console.print(f"{'replaced' if replaced else 'wrote'} {p}",
                                                                 highlight=False))
    f, h, w = rep.shape
    where = f" (rank {rep.rank}/{rep.world_size})" if rep.world_size > 1 else ""
    console.print(f"{rep.condition}, {len(rep.seeds)} seed(s){where}, level {rep.level}: {f}x{h}x{w} @ "
                  f"{rep.fps:g} fps, {sum(rep.seconds):.1f} s on {rep.device} from {rep.weights} (step {rep.step})"
                  + (f", level 0 autoguided by {rep.guide}"
                     + (" at {:g} < sigma <= {:g}".format(*rep.guidance_interval) if rep.guidance_interval else "")
                     if rep.guide else ""), highlight=False)
