"""The work journal that makes `hpdm prepare` resumable (OUT_DIR/.prepare/journal.jsonl).

Line 1 names the plan (`plan.plan_hash`); then one line per finished shard, with the outcomes
of the sources that went into it; then an end marker once every source is processed. A
re-run of the same plan takes over every shard whose files are intact and redoes the rest,
so it produces exactly the dataset of an uninterrupted run.
"""

from __future__ import annotations

import json
import os

from hpdm_cli.io import atomic_write_text

from .options import error

__all__ = ["WORK_DIR", "JOURNAL", "JOURNAL_VERSION", "read_json", "load_journal", "Journal"]

WORK_DIR = ".prepare"
JOURNAL = "journal.jsonl"
JOURNAL_VERSION = 1


def read_json(path: str) -> dict | None:
    """The JSON object in a file, or None if it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def load_journal(path: str, plan: str, out_dir: str) -> list[dict]:
    """Valid journal entries (finished shards, then an optional end marker) of an interrupted run of `plan`."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    try:
        head = json.loads(lines[0])
    except (ValueError, IndexError):
        return []
    if head.get("journal") != "hpdm-prepare" or head.get("version") != JOURNAL_VERSION:
        return []
    if head.get("plan") != plan:
        raise error(f"{out_dir!r} holds an unfinished `hpdm prepare` of other sources or settings: re-run that "
                    "command to finish it, or pass --overwrite to start over")
    entries = []
    for line in lines[1:]:
        try:
            e = json.loads(line)
        except ValueError:
            break  # a line cut by a crash: everything after it is redone
        if "shard" in e:
            n = len([x for x in entries if "shard" in x])
            if e["shard"] != n or e.get("bin") != f"shard-{n:05d}.bin" or e.get("index") != f"shard-{n:05d}.jsonl":
                break
            p = os.path.join(out_dir, e["bin"])
            if not os.path.isfile(p) or os.path.getsize(p) != e["num_bytes"] or \
                    not os.path.isfile(os.path.join(out_dir, e["index"])):
                break
        elif not e.get("end"):
            break
        entries.append(e)
        if e.get("end"):
            break
    return entries


class Journal:
    """Append-only record of finished shards and the sources that went into them (fsynced per line)."""

    def __init__(self, out_dir: str, plan: str, entries: list[dict]):
        self.dir = os.path.join(out_dir, WORK_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, JOURNAL)
        head = {"journal": "hpdm-prepare", "version": JOURNAL_VERSION, "plan": plan}
        atomic_write_text(self.path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [head] + entries))
        self._f = open(self.path, "a", encoding="utf-8")
        self.pending: list[dict] = []

    def _append(self, entry: dict) -> None:
        """Write one line and make it durable before going on."""
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def on_shard(self, shard: dict) -> None:
        """ShardWriter callback: shard files are final; record them with the outcomes that led to them."""
        self._append({"shard": int(shard["bin"][6:].split(".")[0]), **shard, "outcomes": self.pending})
        self.pending = []

    def end(self) -> None:
        """Every source is processed (the outcomes after the last shard are recorded too)."""
        self._append({"end": True, "outcomes": self.pending})
        self.pending = []

    def close(self) -> None:
        """Close the journal file (what was appended stays)."""
        self._f.close()
