"""`hpdm upscale`: parse the options, upscale with `hpdm_cli.drivers.upscale.upscale`, print what was written.

Progress bars go to stderr (rank 0 only under torchrun), results to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import TILE_BATCH
from .console import is_main_rank, rank0_warn, warn_emulated_bf16
from .console import out as console
from .progress import PROGRESS_HELP, bars_wanted, keyed_bars
from .help_texts import (BF16_HELP, COMPILE_HELP, CONTEXT_GIB_HELP, DEVICE_HELP, GUIDANCE_HELP, GUIDANCE_INTERVAL_HELP,
                         GUIDE_MODEL_HELP, OVERLAP_HELP, PROMPT_EMBEDDING_HELP, PROMPT_TABLE_HELP, SIGMA_MAX_HELP,
                         STEPS_HELP)


def upscale(
    input: Path = typer.Argument(..., metavar="INPUT", help="Input video (any size, fps and length PyAV can read)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Run directory, checkpoint directory, .safetensors file, or "
                                                 "packaged (the packaged shapes model)."),
    out: Path = typer.Option(..., "--out", help="Output video (.mp4 H.264; also .m4v/.mov/.mkv/.gif/.png); keeps "
                                               "the input's fps and frame count."),
    from_level: int = typer.Option(0, "--from-level", help="Fix levels 0..K from the input resized to each level's "
                                                           "resolution; the levels above are generated."),
    fit: str = typer.Option("crop", "--fit", help="Aspect ratio: crop = centre-crop the input to the model's aspect "
                                                  "ratio (output at the model's resolution); pad = pad it (see "
                                                  "--pad-mode) and cut the padding off the output again (output "
                                                  "keeps the input's aspect ratio)."),
    pad_mode: str = typer.Option("edge", "--pad-mode", help="With --fit pad: edge (repeat the border pixels) or "
                                                           "black."),
    window_overlap: float = typer.Option(0.5, "--window-overlap", help="Overlap of consecutive windows of the "
                                         "model's frame count, as a fraction (cross-faded linearly)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first window (window j uses seed + j)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (default: the null condition)."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class name or id (default: the null condition)."),
    prompt_table: Optional[Path] = typer.Option(None, "--prompt-table", help=PROMPT_TABLE_HELP),
    prompt_embedding: Optional[Path] = typer.Option(None, "--prompt-embedding", help=PROMPT_EMBEDDING_HELP),
    batch: Optional[int] = typer.Option(None, "--batch", help="Windows per sampler call (default: "
                                                             "sample.batch_size)."),
    steps: Optional[str] = typer.Option(None, "--steps", help=STEPS_HELP),
    guidance: Optional[str] = typer.Option(None, "--guidance", help=GUIDANCE_HELP + " Only with --class/--prompt."),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    guide_model: Optional[str] = typer.Option(None, "--guide-model", help=GUIDE_MODEL_HELP),
    sigma_max: Optional[str] = typer.Option(None, "--sigma-max", help=SIGMA_MAX_HELP),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=OVERLAP_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute lower levels' activations at every step."),
    offload: bool = typer.Option(False, "--offload", help="Keep the activation cache in (pinned) CPU memory."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    tile_batch: int = typer.Option(TILE_BATCH, "--tile-batch", help="Tiles per network forward."),
    context_gib: Optional[float] = typer.Option(None, "--context-gib", help=CONTEXT_GIB_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    compile: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Learned video super-resolution: the input becomes the fixed lower level(s), the model generates the rest.

    Long videos are processed in overlapping windows of the model's frame count, cross-faded; a shorter video is padded with its last frame and trimmed back.
    """
    from ..drivers.upscale import upscale as run_upscale
    warn_emulated_bf16(bf16, device)
    show = bars_wanted(progress) and is_main_rank()
    with keyed_bars(lambda level: f"level {level}", show, lines=is_main_rank()) as bar:
        rep = run_upscale(input, ckpt, out, from_level=from_level, fit=fit, pad_mode=pad_mode,
                          window_overlap=window_overlap, seed=seed, prompt=prompt, class_=class_, steps=steps,
                          guidance=guidance, overlap=overlap, cache=not no_cache, offload=offload, batch=batch,
                          tile_batch=tile_batch, device=device, bf16=bf16, progress=bar, warn=rank0_warn,
                          guidance_interval=guidance_interval, guide_model=guide_model, prompt_table=prompt_table,
                          prompt_embedding=prompt_embedding, context_gib=context_gib, compile=compile,
                          sigma_max=sigma_max)
    if rep.file is None:
        return
    (fi, hi, wi), (fo, ho, wo) = rep.input_shape, rep.output_shape
    console.print(f"upscaled {fi}x{hi}x{wi} -> {fo}x{ho}x{wo} @ {rep.fps:g} fps ({rep.windows} window(s), levels "
                  f"0..{rep.from_level} from the input, {rep.condition}) on {rep.device}", highlight=False)
    console.print(f"{'replaced' if rep.replaced else 'wrote'} {rep.file}", highlight=False)
