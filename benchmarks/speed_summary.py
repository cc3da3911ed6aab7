"""The short table at the end of benchmarks/gpu_speed.sh, from the JSON files it wrote into one folder.

  python3 benchmarks/speed_summary.py OUT_DIR
Reads peer_rin.json (benchmarks/peer_rin.py), draw_cost.json (benchmarks/draw_cost.py), sampling.json,
sampling_held.json, sampling_compiled.json, sampling_compiled_held.json and
sampling_compiled_held_streams.json (`hpdm bench --sampling [--compile] --json`), sampling_baseline.json
(the first baseline's own sampler: its speed-up over each of ours at the same steps) and
memory_vs_resolution.json (benchmarks/memory_vs_resolution.py);
a missing or failed part is named.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _load(folder: Path, name: str):
    """The parsed JSON file `name` in `folder`, or None if it is missing or unreadable."""
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


def _num(value, spec: str) -> str:
    """`value` formatted by `spec`, or "n/a" in the same width where it is null (a CPU's peak memory or MFU)."""
    if value is None:
        return format("n/a", re.match(r"[<>^]?\d*", spec).group())
    return format(value, spec)


def summary(folder: str | Path) -> str:
    """The table of training, sampling and memory results found in `folder`."""
    folder = Path(folder)
    lines = []
    peer = _load(folder, "peer_rin.json")
    if peer is None:
        lines.append("training vs peer: no peer_rin.json (the step failed or timed out: see log.txt)")
    else:
        lines.append(f"{'training (bf16)':<34}{'batch':>6}{'items/s':>10}{'TFLOP/s':>10}{'MFU %':>8}{'peak GiB':>10}")
        for r in peer["rows"]:
            name = f"{r['side']} {r.get('mode') or ('compiled' if r['compile'] else 'eager')}" + \
                (f" ({r['attention']} attention)" if r.get("attention") else "")
            if "error" in r:
                lines.append(f"{name:<34}failed: {r['error'][:80]}")
                continue
            lines.append(f"{name:<34}{r['batch']:>6}{r['items_per_s']:>10.1f}{_num(r['TFLOPs'], '>10.1f')}"
                         f"{_num(r['MFU_%'], '>8.1f')}{_num(r['peak_mem_GiB'], '>10.1f')}")
        for mode, (analytic, counted) in peer.get("ratios", {}).items():
            lines.append(f"ours / peer achieved TFLOP/s, {mode}: {analytic:.2f}x ({counted:.2f}x both counted)")
    draw = _load(folder, "draw_cost.json")
    if draw is not None:
        line = (f"host time of a step's random draw (batch {draw['batch']}): {draw['cpu_ms']:.1f} ms on the CPU, "
                f"{draw['to_device_ms']:.1f} ms onto {draw['device']}")
        if "device_noise_ms" in draw:
            line += f"; noise drawn on the device: {draw['device_noise_ms']:.1f} ms"
        lines.append(line)
    baseline = _load(folder, "sampling_baseline.json")
    for r in baseline or []:
        lines.append(f"sampling, the first baseline's code, {r['overlap']} cache={r['cache']} batch {r['batch']}: "
                     f"{r['s_per_video']:.3f} s/video at {r['steps']} steps")
    for name in ("sampling.json", "sampling_held.json", "sampling_compiled.json", "sampling_compiled_held.json",
                 "sampling_compiled_held_streams.json"):
        samp = _load(folder, name)
        if samp is None:
            lines.append(f"sampling: no {name} (see log.txt)")
            continue
        for r in samp:
            key = lambda row: (row["steps"], row["overlap"], row["batch"])     # noqa: E731
            same = [b for b in baseline or [] if key(b) == key(r)]
            how = f", compiled (compile {r['compile_s']:.0f} s apart)" if r.get("compiled") else ""
            how += f", context held {r['context_GiB']:.3g} GiB" if r.get("context_GiB") else ""
            how += ", bf16 residual streams" if "streams" in name else ""
            lines.append(f"sampling {r['overlap']} cache={r['cache']} batch {r['batch']}{how}: "
                         f"{r['s_per_video']:.3f} s/video at {r['steps']} steps, "
                         f"est. {r['s_per_video_full_steps_est']:.2f} s/video at {r['full_steps']}, "
                         f"peak {_num(r['peak_mem_GiB'], '.1f')} GiB")
            if same:
                lines.append(f"  the first baseline / this: {same[0]['s_per_video'] / r['s_per_video']:.2f}x faster, "
                             f"both timed at {r['steps']} steps")
    mem = _load(folder, "memory_vs_resolution.json")
    if mem is None:
        lines.append("memory: no memory_vs_resolution.json (see log.txt)")
    else:
        for model, rows in mem["points"].items():
            ok = [r for r in rows if r["status"] == "ok"]
            bad = [r for r in rows if r["status"] in ("oom", "error")]
            top = (f"largest trained {'x'.join(map(str, ok[-1]['resolution']))} "
                   f"at {_num(ok[-1]['peak_mem_GiB'], '.1f')} GiB"
                   if ok else "no size trained")
            first_bad = (f", {bad[0]['status']} at {'x'.join(map(str, bad[0]['resolution']))}" if bad else
                         ", no OOM up to the largest size tried")
            lines.append(f"memory {model}: {top}{first_bad}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 benchmarks/speed_summary.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    print(summary(sys.argv[1]))
