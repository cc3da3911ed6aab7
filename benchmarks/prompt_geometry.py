"""How far apart does a prompt table hold captions that differ in one word, before and after text whitening?

For every pair of full `shapes` captions in a prompt table that differ in exactly one attribute (colour,
shape, direction or background), the distance between their encoder states relative to the first's
distance from the table's mean (per token position), averaged per pair of values; printed per attribute
(mean over value pairs, and the closest pair), once for the centred states and once whitened as
`model.text_whitening` does (hpdm_cli/text/whitening.py), with the same measure on the states averaged over
tokens (what adaptive LayerNorm reads). A word the encoder holds close is one a short run learns late
(docs/results.md, sections 63 and 68). Seconds on a CPU:
    python benchmarks/prompt_geometry.py out/gpu/shapes_prompts_tokens.safetensors [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

ATTRS = ("colour", "shape", "direction", "background")


def pair_distances(states, attrs: list) -> dict:
    """Per attribute: {"mean", "closest" (value pair), "closest_distance", "pooled"} over the one-word pairs.

    `states` [N, K, D] are already centred (and whitened, if so); `attrs` the N captions' attribute dicts.
    """
    index = {tuple(a[k] for k in ATTRS): i for i, a in enumerate(attrs)}
    out = {}
    for j, attr in enumerate(ATTRS):
        per_pair, pooled = defaultdict(list), []
        for key, i in index.items():
            for other_key, i2 in index.items():
                if other_key[j] <= key[j] or any(other_key[m] != key[m] for m in range(len(ATTRS)) if m != j):
                    continue
                x, y = states[i], states[i2]
                per_pair[(key[j], other_key[j])].append(float((x - y).norm() / x.norm()))
                pooled.append(float((x.mean(0) - y.mean(0)).norm() / x.mean(0).norm()))
        if not per_pair:
            continue
        means = {p: sum(v) / len(v) for p, v in per_pair.items()}
        closest = min(means, key=means.get)
        out[attr] = {"mean": round(sum(means.values()) / len(means), 3), "closest": "/".join(closest),
                     "closest_distance": round(means[closest], 3), "pooled": round(sum(pooled) / len(pooled), 3)}
    return out


def main(argv=None) -> int:
    """Print the table (and write it as JSON with --json)."""
    from hpdm_cli.data.shards import DataError
    from hpdm_cli.eval.faithfulness import parse_shapes_caption
    from hpdm_cli.text.tables import read_table
    from hpdm_cli.text.whitening import whitening_stats
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", help="a prompt table of shapes captions (hpdm prepare's, or a run's prompt_embeddings)")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args(argv)
    table = read_table(a.table)
    rows, attrs = [], []
    for i, text in enumerate(table.texts):
        try:
            parsed = parse_shapes_caption(text)
        except DataError:
            continue
        if parsed["background"] is not None:                   # full captions: every attribute named
            rows.append(i)
            attrs.append(parsed)
    if len(rows) < 2:
        raise SystemExit(f"prompt_geometry.py: {a.table} holds {len(rows)} full shapes captions; need 2 or more")
    emb = table.embeddings.double()
    mean, matrix = whitening_stats(table.embeddings)             # the statistics of every caption in the table
    views = {"centred": (emb - mean.double())[rows], "whitened": ((emb - mean.double()) @ matrix.double())[rows]}
    result = {name: pair_distances(states, attrs) for name, states in views.items()}
    print(f"{len(rows)} full captions of {len(table.texts)} in {a.table}; distance of one-word swaps relative to "
          "the caption's own distance from the mean")
    print("| states | " + " | ".join(f"{k} (closest pair)" for k in ATTRS) + " | over tokens: " + " / ".join(ATTRS)
          + " |\n|---|" + "---|" * (len(ATTRS) + 1))
    for name, per in result.items():
        cells = [f"{per[k]['mean']:.3f} ({per[k]['closest']} {per[k]['closest_distance']:.3f})" if k in per else ""
                 for k in ATTRS]
        pooled = " / ".join(f"{per[k]['pooled']:.3f}" for k in ATTRS if k in per)
        print(f"| {name} | " + " | ".join(cells) + f" | {pooled} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"table": str(a.table), "captions": len(rows), **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
