"""One markdown table from `hpdm eval` reports: a row per report, the columns docs/results.md uses.

    python benchmarks/quality_table.py RESULTS_DIR [RESULTS_DIR ...]
Every report.json below the given folders (e.g. the unpacked results.tar of gpu_shapes_quality.sh)
becomes a row named by its folder: steps, FVD (with the real-vs-real floor), faithfulness on
held-out prompts, level 0 alone, the upper levels given the real level 0, and the condition loss gap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ["run", "step", "FVD / floor", "colour", "shape", "direction", "all",
           "level 0 alone c/s/d", "given real level 0 c/s/d", "loss true / null"]


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _csd(scores) -> str:
    if not scores:
        return ""
    return " / ".join(f"{100 * scores[k]:.0f}" for k in ("colour", "shape", "direction"))


def row(name: str, report: dict) -> list[str]:
    """The table cells of one `hpdm eval` report."""
    g = report["faithfulness"]["generated"]
    fvd = report.get("fvd")
    levels = report.get("levels", {})
    gap = report.get("loss_gap", {})
    return [name, str(report.get("step", "")),
            f"{fvd['generated']:.1f} / {fvd['real_floor']:.1f}" if fvd else "",
            _pct(g.get("colour")), _pct(g.get("shape")), _pct(g.get("direction")), _pct(g.get("all")),
            _csd(levels.get("level0_generated")), _csd(levels.get("upscaled_from_real_level0")),
            f"{gap['true']:.4f} / {gap['null']:.4f}" if gap else ""]


def table(folders: list[str]) -> str:
    """Markdown for every report.json below `folders`, in path order (curve steps excluded)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for folder in folders:
        root = Path(folder)
        for path in sorted(root.rglob("report.json")):
            if any(part.startswith("step-") for part in path.parts):
                continue
            name = str(path.parent.relative_to(root)) if path.parent != root else root.name
            lines.append("| " + " | ".join(row(name, json.loads(path.read_text()))) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    print(table(ap.parse_args(argv).folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
