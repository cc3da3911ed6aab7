"""DDP scaling of `hpdm train` on one host: N processes under torchrun against one process, same per-GPU batch.

Both runs train the recipe from in-memory synthetic videos (`data.path = "synthetic:shapes"`, so no
loader is timed), for --steps steps with a stats line every --log-every steps, at --batch videos
per GPU (global batch --batch x N for N processes). Throughput is the median `videos_per_s` of the
logged windows after the first --skip windows (start-up, warm-up, compilation); the scaling
efficiency is rate(N) / (N x rate(1)). Example (two GPUs):
  python3 benchmarks/ddp_scaling.py --nproc 2 --json out/ddp.json
  python3 benchmarks/ddp_scaling.py --tiny --nproc 2        # CPU check (gloo), recipes/tiny.toml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def window_rates(stats_path: str | os.PathLike, skip: int) -> list[float]:
    """`videos_per_s` of the logged windows of a run's stats.jsonl, without the first `skip` windows."""
    rates = []
    for line in Path(stats_path).read_text().splitlines():
        rec = json.loads(line)
        if "videos_per_s" in rec:
            rates.append(float(rec["videos_per_s"]))
    return rates[skip:]


def median(values: list[float]) -> float:
    """The median of a non-empty list (mean of the middle two for an even count)."""
    v = sorted(values)
    k = len(v) // 2
    return v[k] if len(v) % 2 else (v[k - 1] + v[k]) / 2


def efficiency(rate_n: float, rate_1: float, n: int) -> float:
    """Scaling efficiency of n processes: rate(n) / (n x rate(1))."""
    return rate_n / (n * rate_1)


def overrides(a, nproc: int) -> list[str]:
    """The recipe overrides of one run: synthetic data, the global batch, steps, logging, precision."""
    o = ["data.path=synthetic:shapes", f"data.synthetic_videos={a.videos_per_rank * nproc}",
         f"train.batch_size={a.batch * nproc}", "train.grad_accum=1", f"train.steps={a.steps}",
         f"train.log_every={a.log_every}", f"train.ckpt_every={a.steps}", f"train.precision={a.precision}",
         "train.warmup_steps=1"]
    if a.compile:
        o.append("train.compile=true")
    if a.tiny:
        o.append("train.device=cpu")
    return o + list(a.override)


def run(a, nproc: int, run_dir: Path) -> dict:
    """Train once with `nproc` processes; returns the window rates or the failure."""
    base = [sys.executable, "-m", "hpdm_cli", "train", a.recipe, *overrides(a, nproc), "--run-dir", str(run_dir),
            "--no-progress"]
    cmd = base if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={nproc}", "-m", *base[2:]]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    # NVLink multicast stays off (NCCL's NVLS), as the GPU host requires.
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    env.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    env.setdefault("OMP_NUM_THREADS", "1" if a.tiny else "4")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        # What the run had logged by then tells a slow start (compilation) from a hang.
        out = "\n".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        stats = run_dir / "stats.jsonl"
        windows = len(window_rates(stats, 0)) if stats.exists() else 0
        return {"nproc": nproc, "error": f"timed out after {a.timeout} s", "logged_windows": windows,
                "output_tail": out.strip().splitlines()[-5:]}
    wall = time.perf_counter() - t0
    stats = run_dir / "stats.jsonl"
    if p.returncode or not stats.exists():
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["(no output)"])[-1]
        return {"nproc": nproc, "error": f"exit {p.returncode}: {tail}", "wall_s": wall}
    rates = window_rates(stats, a.skip)
    if not rates:
        return {"nproc": nproc, "error": f"no logged window after the first {a.skip}: raise --steps", "wall_s": wall}
    return {"nproc": nproc, "global_batch": a.batch * nproc, "window_rates": rates,
            "videos_per_s": median(rates), "wall_s": wall}


def main(argv=None) -> int:
    """Run the one-process and the N-process trainings and print the scaling efficiency."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "ucf.toml"))
    ap.add_argument("--override", action="append", default=[], help="section.key=value for both runs")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="videos per GPU per step")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2, help="logged windows left out (warm-up)")
    ap.add_argument("--videos-per-rank", type=int, default=8, help="synthetic videos rendered per process")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "tf32", "fp32"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="recipes/tiny.toml on the CPU (gloo): checks the pipeline")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per run")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args(argv)
    if a.nproc < 2:
        ap.error("--nproc: expected 2 or more processes")
    if a.tiny:
        a.recipe = str(ROOT / "recipes" / "tiny.toml")
        a.batch, a.steps, a.log_every, a.skip, a.precision = min(a.batch, 4), min(a.steps, 6), 2, 1, "fp32"
    work = Path(tempfile.mkdtemp(prefix="hpdm-ddp-"))
    try:
        one = run(a, 1, work / "one")
        print(f"1 process: {one}", flush=True)
        many = run(a, a.nproc, work / "many")
        print(f"{a.nproc} processes: {many}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"recipe": a.recipe, "batch_per_gpu": a.batch, "precision": a.precision, "compile": a.compile,
              "one": one, "many": many}
    ok = "error" not in one and "error" not in many
    if ok:
        result["efficiency"] = efficiency(many["videos_per_s"], one["videos_per_s"], a.nproc)
        print(f"{Path(a.recipe).name} {a.precision}{' compiled' if a.compile else ''}, {a.batch} videos per GPU: "
              f"1 process {one['videos_per_s']:.2f} videos/s, {a.nproc} processes {many['videos_per_s']:.2f} "
              f"videos/s: scaling efficiency {100 * result['efficiency']:.1f}% of linear")
    if a.json:
        sys.path.insert(0, str(ROOT))
        from hpdm_cli.io import atomic_write_text
        atomic_write_text(a.json, json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
