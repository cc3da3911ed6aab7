"""A shapes prompt table cut down to the held-out prompts: what an evaluation on a GPU host needs, in a quarter of the bytes.

A GPU call carries at most 64 MiB with the checkout; the whole shapes prompt table is 14 MB, and
an FVD call that also brings two base levels (16.4 MB each) and a part of the I3D weights does
not fit with it. Evaluations (`hpdm eval`, `guidance_sweep.py`, `base_level_faithfulness.py
--splits heldout`) only look up the held-out prompts (docs/results.md, section 5), so:
    python benchmarks/heldout_table.py out/gpu/shapes_prompts_tokens.safetensors out/gpu/shapes_prompts_heldout.safetensors
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def heldout_rows(texts: list) -> list:
    """Indices of the texts that name a held-out (colour, shape, direction) triple."""
    from hpdm_cli.data.shapes import COLOURS, DIRECTIONS, SHAPES, is_heldout
    rows = []
    for i, text in enumerate(texts):
        words = re.findall(r"[a-z]+", text.lower())
        colour = next((w for w in words if w in COLOURS), None)      # the object's colour comes first
        shape = next((w for w in words if w in SHAPES), None)
        direction = next((w for w in words if w in DIRECTIONS), None)
        if colour and shape and direction and is_heldout(colour, shape, direction):
            rows.append(i)
    return rows


def main(argv=None) -> int:
    """Write the held-out rows of a shapes prompt table as a table of their own."""
    from hpdm_cli.text.tables import read_table, write_table
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", help="a shapes prompt table (hpdm prepare --synthetic shapes writes one)")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    t = read_table(a.table)
    rows = heldout_rows(t.texts)
    if not rows:
        raise SystemExit(f"{a.table}: no held-out shapes prompt in it")
    write_table(a.out, [t.texts[i] for i in rows], t.embeddings[rows], encoder=t.encoder, spec=t.spec, kind=t.kind)
    print(f"{a.out}: {len(rows)} of {len(t.texts)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
