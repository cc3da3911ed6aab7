"""Makes the packaged default model from a trained `shapes` run or exported weights file.

    python scripts/package_model.py /path/to/run-or-weights.safetensors [--out FILE] \
        [--set sample.level_steps=[64,32,16] ...]

Writes `hpdm_cli/assets/shapes-t2v.safetensors` (or --out): the EMA weights in fp16 with the run's
recipe, minus the settings that only made sense on the training host (PACKAGED_OVERRIDES: its
prompt table and start weights are files there; CUDA-graph compilation is a GPU training choice).
`--set` edits more of the stored recipe, e.g. the sampling defaults that `hpdm sample` uses
without --ckpt. Refuses a file over the package's 16 MiB budget; the old file stays until the new one is whole.
Then update hpdm_cli/assets/MODEL_CARD.md with the new model's training and quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpdm_cli.assets import DEFAULT_MODEL, MAX_MODEL_BYTES  # noqa: E402
from hpdm_cli.errors import HPDMError  # noqa: E402

PACKAGED_OVERRIDES = ('data.prompt_table=""', 'train.init_from=""', "train.compile=false")
MAX_BYTES = MAX_MODEL_BYTES          # a name of its own, so that a test can lower it


def package(source: Path, out: Path = DEFAULT_MODEL, settings: tuple[str, ...] = ()) -> Path:
    """Export `source`'s sampling weights to `out` as the packaged model; HPDMError if it cannot be one."""
    import torch
    from hpdm_cli.io import atomic_path
    from hpdm_cli.checkpoint import export_weights
    with atomic_path(out) as tmp:
        export_weights(source, tmp, torch.float16, overrides=PACKAGED_OVERRIDES + tuple(settings))
        size = Path(tmp).stat().st_size
        if size > MAX_BYTES:
            raise HPDMError(f"{source}: its fp16 weights take {size / 2 ** 20:.1f} MiB, over the package's "
                            f"{MAX_BYTES / 2 ** 20:.0f} MiB; package a smaller model")
    return out


def main(argv: list[str] | None = None) -> int:
    """Package the source given on the command line; 0 when written, 2 (one line on stderr) when refused."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a run directory, checkpoint or exported weights file")
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="where to write (default: the packaged model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a further recipe override to store, e.g. sample.level_steps=[64,32,16] (repeatable)")
    a = ap.parse_args(argv)
    try:
        out = package(a.source, a.out, tuple(a.set))
    except HPDMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packaged {a.source} -> {out} ({out.stat().st_size / 2 ** 20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
