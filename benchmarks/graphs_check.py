"""Does training with CUDA graphs learn what training without them learns? One recipe, trained twice or more.

`train.compile="reduce-overhead"` replays the compiled step as CUDA graphs, and `train.compile` compiles the
update (LAMB's skippable step, the EMA) as well: graphs reuse their output memory from replay to replay, so a
gradient, a learning rate or a skip flag read from a stale buffer would train a different model without any
error. This trains the recipe from the same seed once per `--modes` entry (each a `train.compile` value), logs
the loss at every step, and compares every run with the first: the largest relative difference of the logged
losses and of the EMA weights. Then it resumes the last run for `--resume-steps` more steps (a checkpoint
written under graphs must load and train on). Every run uses the same synthetic `shapes` data
(`data.path = "synthetic:shapes"`, rendered into memory at the recipe's size), so no dataset travels.

    python benchmarks/graphs_check.py [RECIPE] --device cuda [--modes true,reduce-overhead] [--steps 40]
        [--resume-steps 20] [--tolerance 0.02] [--override KEY=VALUE ...] [--json F]

On a lent GPU (tomli-w staged into out/gpu/whl-min by `benchmarks/stage_gpu_inputs.sh`):
    run(command="export WHL=out/gpu/whl-min; source benchmarks/gpu_env.sh; python3 benchmarks/graphs_check.py
        --device cuda", carry=["out/gpu/whl-min"])

Same kernels, same inputs: the compiled runs should agree to bf16/tf32 rounding, far inside `--tolerance`
(relative, losses and weights). On a CPU, `--modes false,false` checks the script itself (two eager runs
agree exactly). Exit code 1 when a run fails or differs beyond the tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpdm_cli.checkpoint import resolve_sampling_weights  # noqa: E402
from hpdm_cli.train.checkpoint import read_weights_file  # noqa: E402
from hpdm_cli.train.stats import read_stats  # noqa: E402


def _compile_value(mode: str) -> str:
    """The TOML value of `train.compile` for a --modes entry (true / false, or a mode's name quoted)."""
    return mode if mode in ("true", "false") else json.dumps(mode)


def train(recipe: str, run_dir: Path, mode: str, steps: int, device: str, overrides: list[str]) -> float:
    """Train `recipe` into `run_dir` up to `steps` with `train.compile` set by `mode`; the process's seconds."""
    args = [sys.executable, "-m", "hpdm_cli", "train", recipe, "--run-dir", str(run_dir), "--no-progress",
            'data.path="synthetic:shapes"', f'train.device="{device}"', f"train.compile={_compile_value(mode)}",
            "data.synthetic_videos=256", f"train.steps={steps}", "train.log_every=1", f"train.ckpt_every={steps}", "train.keep_last=2",
            *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"train {mode} exited {done.returncode}:\n{tail}")
    return time.perf_counter() - t0


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> logged loss of a run (the last row of a step wins: a resumed run may log it again)."""
    return {int(r["step"]): float(r["loss"]) for r in read_stats(run_dir) if "loss" in r and "step" in r}


def relative_difference(a: dict[int, float], b: dict[int, float]) -> float:
    """The largest |a - b| / |a| over the steps both logged (inf when they share none or one is not finite)."""
    steps = sorted(set(a) & set(b))
    if not steps:
        return math.inf
    worst = 0.0
    for s in steps:
        if not (math.isfinite(a[s]) and math.isfinite(b[s])):
            return math.inf
        worst = max(worst, abs(a[s] - b[s]) / max(abs(a[s]), 1e-12))
    return worst


def weights_difference(run_a: Path, run_b: Path) -> float:
    """The largest ‖a - b‖ / ‖a‖ over the floating-point tensors of two runs' newest EMA weights."""
    wa, _, _ = read_weights_file(resolve_sampling_weights(run_a))
    wb, _, _ = read_weights_file(resolve_sampling_weights(run_b))
    if wa.keys() != wb.keys():
        return math.inf
    worst = 0.0
    for k, a in wa.items():
        if a.is_floating_point():
            a, b = a.double(), wb[k].double()
            worst = max(worst, float((a - b).norm() / a.norm().clamp_min(1e-12)))
    return worst


def check(recipe: str, out: Path, modes: list[str], steps: int, resume_steps: int, device: str,
          overrides: list[str], tolerance: float) -> dict:
    """Train once per mode, compare each run with the first, resume the last; the report (`ok`: all agreed)."""
    rows = []
    for i, mode in enumerate(modes):
        run = out / f"run{i}-{mode}"
        row = {"mode": mode, "seconds": round(train(recipe, run, mode, steps, device, overrides), 1),
               "steps_logged": len(losses(run))}
        if i:
            first = out / f"run0-{modes[0]}"
            row["loss_rel_diff"] = relative_difference(losses(first), losses(run))
            row["weights_rel_diff"] = weights_difference(first, run)
        rows.append(row)
    report = {"recipe": recipe, "device": device, "steps": steps, "tolerance": tolerance, "rows": rows}
    if resume_steps:
        last = out / f"run{len(modes) - 1}-{modes[-1]}"
        secs = train(recipe, last, modes[-1], steps + resume_steps, device, overrides)
        logged = losses(last)
        report["resume"] = {"mode": modes[-1], "to_step": steps + resume_steps, "seconds": round(secs, 1),
                            "reached": max(logged, default=0),
                            "finite": all(math.isfinite(v) for s, v in logged.items() if s > steps)}
    agree = all(r.get("loss_rel_diff", 0.0) <= tolerance and r.get("weights_rel_diff", 0.0) <= tolerance
                for r in rows)
    resumed = "resume" not in report or (report["resume"]["reached"] == steps + resume_steps
                                         and report["resume"]["finite"])
    report["ok"] = bool(agree and resumed and all(r["steps_logged"] == steps for r in rows))
    return report


def table(report: dict) -> str:
    """The report as a short table."""
    lines = [f"{report['recipe']} on {report['device']}, {report['steps']} steps from one seed "
             f"(tolerance {report['tolerance']}):",
             f"{'train.compile':>16} {'seconds':>8} {'steps':>6} {'loss rel diff':>14} {'weights rel diff':>17}"]
    for r in report["rows"]:
        d = (f"{r['loss_rel_diff']:>14.2e} {r['weights_rel_diff']:>17.2e}" if "loss_rel_diff" in r
             else f"{'(reference)':>14} {'':>17}")
        lines.append(f"{r['mode']:>16} {r['seconds']:>8} {r['steps_logged']:>6} {d}")
    if "resume" in report:
        r = report["resume"]
        lines.append(f"resumed {r['mode']} to step {r['to_step']}: reached {r['reached']}, losses "
                     f"{'finite' if r['finite'] else 'NOT finite'}, {r['seconds']} s")
    lines.append("verdict: " + ("the runs agree" if report["ok"] else "FAILED: the runs differ or did not finish"))
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: train, compare, print the table; exit 1 unless every run agreed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default="recipes/tiny.toml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="true,reduce-overhead", help="train.compile values, comma-separated")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--resume-steps", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--override", action="append", default=[], help="a recipe override KEY=VALUE (repeatable)")
    p.add_argument("--out", type=Path, default=Path("out/graphs-check"))
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if len(modes) < 2 or a.steps < 1 or a.resume_steps < 0:
        p.error("--modes needs two values or more, --steps >= 1, --resume-steps >= 0")
    if a.out.exists() and any(a.out.iterdir()):
        p.error(f"--out {a.out} is not empty: runs there would resume, not start from the seed")
    try:
        report = check(a.recipe, a.out, modes, a.steps, a.resume_steps, a.device, a.override, a.tolerance)
    except RuntimeError as e:
        print(f"graphs_check: {e}", file=sys.stderr)
        return 1
    print(table(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
