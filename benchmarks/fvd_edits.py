"""What does each visible defect of a shapes model cost in FVD? Real clips, edited one way at a time, against real clips.

The held-out real clips of `guidance_sweep.py` (same renderer, seeds and split) are the reference;
every other row is N other real clips re-composed with one controlled change, scored by FVD
against the reference beside the real-vs-real floor. The edits mimic what a model gets wrong
(docs/results.md, sections 8-10):

  no stripes      the background's oriented stripes removed (its low-frequency waves kept)
  flat            no background texture at all
  mottled         the texture replaced by isotropic noise band-limited to the stripes' 2-5
                  cycles per frame side, of the same standard deviation, static over the clip
  larger 1.1      objects 1.1x the size (1.21x the area)
  half motion     the object's path shrunk to half its length around its midpoint
  mottled+larger  both: roughly what the packaged model draws

An edit whose FVD is near the floor is not what keeps a model's FVD high. Runs on a CPU (I3D at
~0.6 s per clip on 2 cores: ~25 minutes at --num 256):
    python benchmarks/fvd_edits.py --i3d-weights out/gpu/i3d-kinetics-400.ckpt --num 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EDITS = ("no stripes", "flat", "mottled", "larger 1.1", "half motion", "mottled+larger")


def band_noise(height: int, width: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian noise [H, W] with power only at 2-5 cycles per frame side, scaled to `std`."""
    fy = np.fft.fftfreq(height)[:, None] * min(height, width)
    fx = np.fft.fftfreq(width)[None, :] * min(height, width)
    radius = np.hypot(fy, fx)
    spec = np.fft.fft2(rng.standard_normal((height, width))) * ((radius >= 2.0) & (radius <= 5.0))
    field = np.real(np.fft.ifft2(spec))
    return field * (std / max(float(field.std()), 1e-12))


def edited_clip(index: int, edit: str, resolution, split: str, seed: int) -> np.ndarray:
    """Real clip `index` re-composed with one edit: uint8 [T, H, W, 3]."""
    from hpdm_cli.data import shapes
    T, H, W = resolution
    attrs = shapes.shapes_attributes(index, frames=T, height=H, width=W, seed=seed, split=split)
    tex = dict(attrs["texture"])
    size, centres = attrs["size"], np.asarray(attrs["centres"])
    if edit in ("no stripes", "flat"):
        tex.update(freq=0.0, phase=0.0)                       # sin(0) everywhere: no stripe term
    if edit == "flat":
        tex.update(waves=[])
    lum = shapes._texture(H, W, tex)                            # [H, W, 3]: luminance times the tint
    if edit.startswith("mottled"):
        rng = np.random.default_rng([seed, index, 0xB0B])
        tint = 1.0 + np.asarray(tex["tint"])[None, None, :]
        lum = band_noise(H, W, float(lum.mean(-1).std()), rng)[..., None] * tint
    if edit.endswith("larger") or edit == "larger 1.1":
        size *= 1.1
    if edit == "half motion":
        centres = centres.mean(0, keepdims=True) + 0.5 * (centres - centres.mean(0, keepdims=True))
    bg = np.asarray(attrs["background_rgb"], np.float32)[None, None] + shapes._TEXTURE_AMPLITUDE * lum
    col = np.asarray(attrs["colour_rgb"], np.float32)
    out = np.empty((T, H, W, 3), np.uint8)
    for t, (cx, cy) in enumerate(centres):
        alpha = shapes.shape_coverage(attrs["shape"], float(cx), float(cy), size, H, W)[..., None]
        out[t] = np.clip(np.rint(bg + alpha * (col - bg)), 0, 255).astype(np.uint8)
    return out


def main(argv=None) -> int:
    """Print one JSON line per row (floor, then each edit), then a markdown table."""
    from hpdm_cli.drivers.evaluate import EVAL_SEED, render_real
    from hpdm_cli.eval.fvd import I3DExtractor, feature_stats, frechet_distance
    from hpdm_cli.eval.texture import stripe_summary
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=256, help="clips per side")
    ap.add_argument("--resolution", default="16,64,64", help="T,H,W of the clips")
    ap.add_argument("--edits", default=",".join(EDITS), help=f"comma-separated, of: {', '.join(EDITS)}")
    ap.add_argument("--i3d-weights", default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    edits = [e for e in a.edits.split(",") if e]
    unknown = [e for e in edits if e not in EDITS]
    if unknown:
        ap.error(f"unknown edit(s) {unknown}: choose from {', '.join(EDITS)}")
    R = tuple(int(v) for v in a.resolution.split(","))
    ext = I3DExtractor(a.i3d_weights, a.device)
    ref = feature_stats(ext.features(iter(render_real(a.num, 0, R, "heldout").videos)))
    rows = []
    for name in ["real (floor)", *edits]:
        t0 = time.time()
        if name == "real (floor)":
            clips = render_real(a.num, a.num, R, "heldout").videos
        else:
            clips = [edited_clip(i, name, R, "heldout", EVAL_SEED) for i in range(a.num, 2 * a.num)]
        f = float(frechet_distance(*ref, *feature_stats(ext.features(iter(clips)))))
        stripes = stripe_summary(clips)["mean"]
        rows.append((name, f, stripes))
        print(json.dumps({"row": name, "fvd": round(f, 1), "stripes": round(stripes, 3), "n": a.num,
                          "seconds": round(time.time() - t0, 1)}), flush=True)
    print(f"\n{a.num} held-out clips per side, {R[0]}x{R[1]}x{R[2]}")
    print("| fake side | FVD | stripes |\n|---|---|---|")
    for name, f, s in rows:
        print(f"| {name} | {f:.1f} | {s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
