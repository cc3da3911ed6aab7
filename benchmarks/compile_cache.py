"""Runs an `hpdm` command with torch.compile's caches loaded from, and saved back to, portable files.

A fresh GPU machine spends ~4-5 minutes compiling the shapes pyramid with CUDA graphs before its
first step; with a warm cache ~30 s (docs/benchmarks.md). The caches live under /tmp and are lost
with the machine, so this wrapper packs them (`torch.compiler.save_cache_artifacts`: inductor's
FX graphs, Triton kernels, AOTAutograd and autotuning results) after the command, zlib-compressed,
into parts of at most --part-mib each (a lent machine sends back files of at most 16 MiB), and
loads them before the command on the next machine:

    python3 benchmarks/compile_cache.py --cache out/gpu/compile-cache -- train recipes/shapes.toml ...

writes out/gpu/compile-cache.part-00, -01, ... (all old parts replaced, each written to a temporary
name first) and returns the command's exit code. A cache made by another torch, GPU or code
version loads but misses: compilation then runs as without it. `hpdm train` does the same with one
file (`train.compile_cache`); this wrapper splits it into parts that a lent machine can send back, for
any hpdm command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def parts_of(cache: Path) -> list[Path]:
    """The cache's existing part files, in order."""
    return sorted(cache.parent.glob(cache.name + ".part-*"))


def load(cache: Path) -> int:
    """Load the cache's parts into torch.compile's caches; the compressed bytes read (0: none or unusable)."""
    from hpdm_cli.train.step import unpack_compile_caches
    parts = parts_of(cache)
    if not parts:
        return 0
    blob = b"".join(p.read_bytes() for p in parts)
    try:
        unpack_compile_caches(blob)
    except Exception as e:                  # noqa: BLE001 - a bad cache only costs the compile time it would save
        print(f"[compile cache] {cache}.part-*: unusable ({type(e).__name__}: {e}); compiling without it",
              file=sys.stderr, flush=True)
        return 0
    return len(blob)


def save(cache: Path, part_bytes: int) -> int:
    """Write torch.compile's caches of this process as the cache's parts; the compressed bytes (0: nothing compiled)."""
    from hpdm_cli.train.step import pack_compile_caches
    blob = pack_compile_caches()
    if blob is None:
        return 0
    cache.parent.mkdir(parents=True, exist_ok=True)
    chunks = [blob[i:i + part_bytes] for i in range(0, len(blob), part_bytes)]
    new = []
    for i, chunk in enumerate(chunks):
        tmp = cache.parent / f".{cache.name}.part-{i:02d}.tmp"
        tmp.write_bytes(chunk)
        new.append(tmp)
    for old in parts_of(cache):
        old.unlink()
    for i, tmp in enumerate(new):
        os.replace(tmp, cache.parent / f"{cache.name}.part-{i:02d}")
    return len(blob)


def main(argv=None) -> int:
    """Load the cache, run `hpdm ARGS` in this process, save the cache; the command's exit code."""
    from hpdm_cli.cli.app import exit_code
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True, help="cache path prefix: its parts are PREFIX.part-NN")
    ap.add_argument("--part-mib", type=float, default=15.0, help="largest part file, MiB")
    ap.add_argument("hpdm_args", nargs=argparse.REMAINDER, help="-- then the hpdm command and its arguments")
    a = ap.parse_args(argv)
    args = a.hpdm_args[1:] if a.hpdm_args[:1] == ["--"] else a.hpdm_args
    if not args:
        ap.error("give the hpdm command after --, e.g. -- train recipes/shapes.toml")
    t0 = time.time()
    got = load(a.cache)
    print(f"[compile cache] loaded {got / 2 ** 20:.1f} MiB from {a.cache}.part-* in {time.time() - t0:.1f} s"
          if got else f"[compile cache] none at {a.cache}.part-*", file=sys.stderr, flush=True)
    rc = exit_code(args)
    t0 = time.time()
    wrote = save(a.cache, int(a.part_mib * 2 ** 20))
    print(f"[compile cache] saved {wrote / 2 ** 20:.1f} MiB in {len(parts_of(a.cache))} part(s) in "
          f"{time.time() - t0:.1f} s" if wrote else "[compile cache] nothing compiled: nothing saved",
          file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
