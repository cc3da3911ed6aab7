"""What a run of `hpdm prepare` did: `PrepareResult`, the outcome of each source, and prepare_report.json
(counts, skipped files with their reasons, notes, warnings, the options used)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from hpdm_cli.io import atomic_write_text

from .journal import read_json
from .options import PrepareOptions
from .plan import Part
from .sources import Source, printable

__all__ = ["REPORT_NAME", "PrepareResult", "outcome", "reason_kind", "summarise", "write_report", "run_result",
           "existing_result"]

REPORT_NAME = "prepare_report.json"
_NOTE_LIST_LIMIT = 1000


@dataclass
class PrepareResult:
    """What `prepare_dataset` did: counts, skipped files with reasons, where the report is."""

    out_dir: str
    published: bool                       # dataset.json written (False: --strict and something was skipped)
    already_complete: bool                # nothing to do: OUT_DIR already held this very dataset
    num_sources: int                      # files considered (videos and images)
    num_videos: int                       # videos in the dataset
    num_images: int                       # images in OUT_DIR/images
    num_frames: int
    num_bytes: int
    video_seconds: float                  # stored video duration (num_frames / fps)
    skipped: list[dict]                   # {"source", "kind", "reason"} in processing order
    notes: dict                           # {"rotated": n, "looped": n, ...}: kept but noteworthy
    resumed: int                          # sources taken over from an interrupted run
    seconds: float                        # wall time of this call
    report_path: str
    image_dir: str | None = None
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)
    warnings: list[str] = field(default_factory=list)  # e.g. conflicting caption rows (the last one is used)

    @property
    def bytes_per_video_second(self) -> float:
        """Stored bytes per second of video."""
        return self.num_bytes / self.video_seconds if self.video_seconds else 0.0

    @property
    def raw_bytes_per_video_second(self) -> float:
        """Bytes per second of the same video as raw uint8 RGB."""
        return float(self.size[0] * self.size[1] * 3 * self.fps)


def outcome(src: Source, res: dict) -> dict:
    """The journal and report record of one processed source: stored (frames, notes) or skipped (reason)."""
    o = {"source": src.rel, "status": res["status"]}
    if res["status"] == "skipped":
        o["reason"] = res["reason"]
    else:
        o["frames"] = res["num_frames"]
        if res.get("notes"):
            o["notes"] = res["notes"]
    return o


def summarise(parts: list[Part]) -> tuple[list[dict], dict]:
    """(skipped sources with their reasons, {note: count and examples}) of all parts."""
    skipped, notes = [], {}
    for p in parts:
        for o in p.outcomes:
            if o["status"] == "skipped":
                skipped.append({"source": o["source"], "kind": o.get("kind", p.kind), "reason": o["reason"]})
            for key, val in (o.get("notes") or {}).items():
                n = notes.setdefault(key, {"count": 0, "sources": []})
                n["count"] += 1
                if len(n["sources"]) < _NOTE_LIST_LIMIT:
                    n["sources"].append({"source": o["source"], "value": val})
    return skipped, notes


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, by which the report counts them: its text before the first colon."""
    return str(reason).split(":", 1)[0]


def write_report(out_dir: str, parts: list[Part], opts: PrepareOptions, result: PrepareResult,
                 source_desc: str, where: str | None = None) -> None:
    """Write prepare_report.json into `where` (default `out_dir`; the staging dir when replacing a dataset)."""
    skipped, notes = summarise(parts)
    reasons: dict[str, int] = {}
    for s in skipped:
        key = reason_kind(s["reason"])
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "tool": "hpdm prepare",
        "status": ("complete" if result.published else "not published (--strict: files were skipped)" if opts.strict
                   else "not published (no file could be stored)"),
        "source": source_desc,
        "options": {k: (list(v) if isinstance(v, tuple) else printable(v) if isinstance(v, str) else v)
                    for k, v in dataclasses.asdict(opts).items()
                    if k not in ("workers", "overwrite")},
        "parts": [{"kind": p.kind, "root": printable(p.root), "dataset": os.path.relpath(p.out_dir, out_dir),
                   "sources": len(p.sources), "stored": sum(o["status"] == "ok" for o in p.outcomes),
                   "skipped": sum(o["status"] == "skipped" for o in p.outcomes),
                   "class_names": len(p.class_names), **{k: v for k, v in p.info.items()}} for p in parts],
        "summary": {
            "videos": result.num_videos, "images": result.num_images, "skipped": len(skipped),
            "skipped_by_reason": reasons, "frames": result.num_frames, "bytes": result.num_bytes,
            "video_seconds": round(result.video_seconds, 3),
            "bytes_per_video_second": round(result.bytes_per_video_second, 1),
            "raw_uint8_bytes_per_video_second": result.raw_bytes_per_video_second,
            "compression_vs_raw": round(result.raw_bytes_per_video_second / result.bytes_per_video_second, 1)
            if result.bytes_per_video_second else None,
        },
        "skipped": skipped,
        "notes": notes,
        "warnings": result.warnings,
        "run": {"seconds": round(result.seconds, 2), "resumed_sources": result.resumed,
                "workers": opts.resolved_workers()},
    }
    atomic_write_text(os.path.join(where or out_dir, REPORT_NAME),
                      json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def run_result(out_dir: str, parts: list[Part], opts: PrepareOptions, t_start: float) -> PrepareResult:
    """The result of a run whose parts are all processed (not yet published: see `published`)."""
    skipped, notes = summarise(parts)
    stored = [sum(o["status"] == "ok" for o in p.outcomes) for p in parts]
    num_frames = sum(o.get("frames", 0) for p in parts if p.kind == "video" for o in p.outcomes)
    num_bytes = sum(sum(s["num_bytes"] for s in p.writer.shards) for p in parts)
    report_dir = parts[0].write_dir  # the staging dir when replacing a dataset: the report moves in with it
    return PrepareResult(
        out_dir=out_dir, published=not (opts.strict and skipped), already_complete=False,
        num_sources=sum(len(p.sources) for p in parts),
        num_videos=sum(n for p, n in zip(parts, stored) if p.kind == "video"),
        num_images=sum(n for p, n in zip(parts, stored) if p.kind == "image"),
        num_frames=num_frames, num_bytes=num_bytes, video_seconds=num_frames / opts.fps, skipped=skipped,
        notes={k: v["count"] for k, v in notes.items()}, resumed=sum(p.resumed for p in parts),
        seconds=time.time() - t_start, report_path=os.path.join(report_dir, REPORT_NAME),
        image_dir=next((p.out_dir for p in parts if p.kind == "image"), None), fps=opts.fps, size=tuple(opts.size),
        warnings=[w for p in parts for w in p.info.get("warnings", [])])


def existing_result(out_dir: str, parts: list[Part], opts: PrepareOptions, t_start: float) -> PrepareResult:
    """The result of a run that found its dataset already complete at `out_dir` (read from the dataset and report)."""
    from hpdm_cli.data.shards import VideoDataset  # noqa: PLC0415
    report = read_json(os.path.join(out_dir, REPORT_NAME)) or {}
    skipped = list(report.get("skipped") or [])
    counts, frames, nbytes = {}, 0, 0
    for p in parts:
        with VideoDataset(p.out_dir) as ds:
            counts[p.kind] = len(ds)
            nbytes += int(ds.info.get("num_bytes", 0))
            if p.kind == "video":
                frames += int(ds.info.get("num_frames", 0))
    notes = {k: v.get("count", 0) for k, v in (report.get("notes") or {}).items()}
    return PrepareResult(out_dir=out_dir, published=True, already_complete=True,
                         warnings=list(report.get("warnings") or []),
                         num_sources=sum(len(p.sources) for p in parts), num_videos=counts.get("video", 0),
                         num_images=counts.get("image", 0), num_frames=frames, num_bytes=nbytes,
                         video_seconds=frames / opts.fps, skipped=skipped, notes=notes, resumed=0,
                         seconds=time.time() - t_start, report_path=os.path.join(out_dir, REPORT_NAME),
                         image_dir=next((p.out_dir for p in parts if p.kind == "image"), None), fps=opts.fps,
                         size=tuple(opts.size))
