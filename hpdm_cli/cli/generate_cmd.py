"""`hpdm sample` and `hpdm upscale`: thin Typer front ends of `hpdm_cli.drivers.sample` / `.upscale` (parse, call, print).

Registered on the app by `register(app)`. Engine errors (`GenerateError`, `DeviceError`) become one-line
user errors (exit code 2); progress bars go to stderr, results to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .progress import keyed_bars

_OVERLAP_HELP = "Tile overlap axes at inference: fhw|fh|fw|hw|f|h|w|none (default: the recipe's pyramid.overlap)."
_STEPS_HELP = ("Sampler steps: N at level 0, halved per level (at least 1), or one value per level, e.g. 32,16,8 "
               "(default: the recipe's sample.steps).")
_DEVICE_HELP = "auto (CUDA if visible, else CPU), cpu, cuda or cuda:N."


def _user_errors(fn):
    """Run an engine call, turning GenerateError (and DeviceError) into the app's one-line UserError."""
    from ..device import DeviceError
    from ..conditioning import GenerateError
    from .app import UserError
    try:
        return fn()
    except (GenerateError, DeviceError) as e:
        raise UserError(str(e)) from None


def _is_main_rank() -> bool:
    from ..device import world
    return world().rank == 0


def _warn(message: str) -> None:
    """A one-line warning on stderr (rank 0 only), e.g. an unusable checkpoint skipped in a run directory."""
    from .app import err
    if _is_main_rank():
        err.print(f"hpdm: warning: {message}", highlight=False, markup=False)


def sample(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Run directory (newest checkpoint, EMA weights), "
                                        "checkpoint directory or .safetensors file. Default: the packaged shapes "
                                        "text-to-video model (hpdm_cli/assets/MODEL_CARD.md), with --steps 32,16,8 "
                                        "--overlap none unless given."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text prompt (text models); for a class model a "
                                                               "prompt that names a class is accepted."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class name or id (class models). Without "
                                                             "--class/--prompt: the null condition (unconditional)."),
    prompt_table: Optional[Path] = typer.Option(None, "--prompt-table", help="Look --prompt up here first: a "
                                                "prompt/caption embedding table (.safetensors) or a folder holding "
                                                "them (a prepared dataset, a run). Tables next to the checkpoint and "
                                                "with its dataset are searched anyway; the text encoder is loaded "
                                                "only for a prompt no table has."),
    prompt_embedding: Optional[Path] = typer.Option(None, "--prompt-embedding", help="A precomputed text "
                                                    "embedding (.safetensors holding one tensor of tokens x dim "
                                                    "numbers) to condition on, instead of --prompt."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds: 0-7, 1,5,9, 3 or mixes like 0-3,8; one video per seed."),
    out: Path = typer.Option(Path("clip.mp4"), "--out", help="Output video (.mp4 H.264; also .mov/.mkv/.gif/.png). "
                                                            "Several seeds: one file per seed, clip-seed0003.mp4."),
    gif: bool = typer.Option(False, "--gif", help="Also write a GIF next to each video."),
    png: bool = typer.Option(False, "--png", help="Also write a PNG strip of all frames next to each video."),
    levels: Optional[int] = typer.Option(None, "--levels", help="Index of the last level to generate: 0 = only "
                                         "level 0 (a low-resolution preview, same duration); default: all."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Seeds per sampler call (default: sample.batch_size)."),
    steps: Optional[str] = typer.Option(None, "--steps", help=_STEPS_HELP),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale (1 = off; "
                                                                     "default: sample.guidance)."),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=_OVERLAP_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute lower levels' activations at every step "
                                                           "instead of caching them (same video, slower)."),
    offload: bool = typer.Option(False, "--offload", help="Keep the activation cache in (pinned) CPU memory."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of the full video (default: sample.fps, "
                                                           "else data.fps)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    tile_batch: int = typer.Option(64, "--tile-batch", help="Tiles per network forward."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (GPU)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars on stderr "
                                                                                  "(default: on)."),
):
    """Generate videos from a checkpoint: `hpdm sample --ckpt runs/tiny --class 0 --seeds 0-3 --out clip.mp4`.

    Under torchrun the seeds are split across ranks; each rank writes its own seeds' files.
    """
    from ..drivers.sample import generate
    from .app import out as console
    show = (progress if progress is not None else True) and _is_main_rank()
    with keyed_bars(lambda level: f"level {level}", show) as bar:
        rep = _user_errors(lambda: generate(
            ckpt, out, seeds=seeds, prompt=prompt, class_=class_, levels=levels, batch=batch, steps=steps,
            guidance=guidance, overlap=overlap, cache=not no_cache, offload=offload, fps=fps, device=device,
            gif=gif, png=png, tile_batch=tile_batch, bf16=bf16, progress=bar, warn=_warn, prompt_table=prompt_table,
            prompt_embedding=prompt_embedding))
    f, h, w = rep.shape
    where = f" (rank {rep.rank}/{rep.world_size})" if rep.world_size > 1 else ""
    console.print(f"{rep.condition}, {len(rep.seeds)} seed(s){where}, level {rep.level}: {f}x{h}x{w} @ "
                  f"{rep.fps:g} fps, {sum(rep.seconds):.1f} s on {rep.device} from {rep.weights} (step {rep.step})",
                  highlight=False)
    for p in rep.files:
        console.print(f"wrote {p}", highlight=False)


def upscale(
    input: Path = typer.Argument(..., help="Input video (any size, fps and length PyAV can read)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Run directory, checkpoint directory or .safetensors file."),
    out: Path = typer.Option(..., "--out", help="Output video (.mp4 H.264; also .mov/.mkv/.gif); keeps the input's "
                                               "fps and frame count."),
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
    batch: Optional[int] = typer.Option(None, "--batch", help="Windows per sampler call (default: "
                                                             "sample.batch_size)."),
    steps: Optional[str] = typer.Option(None, "--steps", help=_STEPS_HELP),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale with --class/--prompt "
                                                                     "(default: sample.guidance; 1 without)."),
    overlap: Optional[str] = typer.Option(None, "--overlap", help=_OVERLAP_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute lower levels' activations at every step."),
    offload: bool = typer.Option(False, "--offload", help="Keep the activation cache in (pinned) CPU memory."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    tile_batch: int = typer.Option(64, "--tile-batch", help="Tiles per network forward."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (GPU)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars on stderr "
                                                                                  "(default: on)."),
):
    """Learned video super-resolution: the input becomes the fixed lower level(s), the model generates the rest.

    Long videos are processed in overlapping windows of the model's frame count, cross-faded; a shorter video is padded with its last frame and trimmed back.
    """
    from ..drivers.upscale import upscale as run_upscale
    from .app import out as console
    show = (progress if progress is not None else True) and _is_main_rank()
    with keyed_bars(lambda level: f"level {level}", show) as bar:
        rep = _user_errors(lambda: run_upscale(
            input, ckpt, out, from_level=from_level, fit=fit, pad_mode=pad_mode, window_overlap=window_overlap,
            seed=seed, prompt=prompt, class_=class_, steps=steps, guidance=guidance, overlap=overlap,
            cache=not no_cache, offload=offload, batch=batch, tile_batch=tile_batch, device=device, bf16=bf16,
            progress=bar, warn=_warn))
    if rep.file is None:
        return
    (fi, hi, wi), (fo, ho, wo) = rep.input_shape, rep.output_shape
    console.print(f"upscaled {fi}x{hi}x{wi} -> {fo}x{ho}x{wo} @ {rep.fps:g} fps ({rep.windows} window(s), levels "
                  f"0..{rep.from_level} from the input, {rep.condition}) on {rep.device}", highlight=False)
    console.print(f"wrote {rep.file}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `sample` and `upscale` commands to the `hpdm` app."""
    app.command("sample")(sample)
    app.command("upscale")(upscale)
