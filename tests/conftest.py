"""Shared fixtures: tiny configurations that run in milliseconds on a CPU."""

import json
import sys

import numpy as np
import pytest
import torch

from hpdm_cli.config import DiffusionConfig, ModelConfig, PyramidConfig, Recipe


def tiny_recipe(resolution=(8, 32, 32), patch=(4, 8, 8), **model) -> Recipe:
    """A tiny recipe whose pyramid has 1 + log2(resolution / patch) levels."""
    m = dict(interface_dim=32, latent_dim=32, num_latents=8, num_blocks=4, compute_layers=1, head_dim=16,
             tokenizer=(1, 2, 2), num_classes=5, mlp_ratio=2.0)
    m.update(model)
    return Recipe(pyramid=PyramidConfig(resolution=resolution, patch=patch), model=ModelConfig(**m),
                  diffusion=DiffusionConfig()).validate()


def tiny_toml(*overrides: str) -> Recipe:
    """recipes/tiny.toml as `hpdm train` reads it, with command-line style overrides."""
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    return load_recipe(default_recipe_path("tiny"), list(overrides))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny forwards are dominated by thread hand-offs on a shared 2-core machine: run a module on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def strict_json(text: str):
    """`text` parsed as JSON as strict readers do (JavaScript's JSON.parse, jq): NaN and Infinity refused."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run `hpdm ARGS` in this process through the console-script entry point: (exit code, stdout, stderr)."""
    from hpdm_cli.cli.app import main
    old = sys.argv
    sys.argv = ["hpdm", *[str(a) for a in args]]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err


class MeanColourFeatures:
    """A stand-in for the I3D extractor: each clip's mean colour and mean frame change (4 features)."""

    sha256 = "mean colour and frame change"          # in place of the I3D weights' fingerprint

    def __init__(self, *a, **k):
        pass

    def features(self, clips):
        f = [np.r_[c.reshape(-1, 3).mean(0), np.abs(np.diff(c.astype(float), axis=0)).mean()] for c in clips]
        return np.asarray(f, dtype=np.float64)


@pytest.fixture
def stopped_sampling(monkeypatch):
    """`hpdm sample`'s driver with its sampler call replaced by one that records the tiling asked for and raises
    Stop: (the tilings seen, Stop)."""
    import hpdm_cli.drivers.sample as drv
    seen = []

    class Stop(Exception):
        pass

    def record(*args, overlap=None, **kwargs):
        seen.append(overlap)
        raise Stop
    monkeypatch.setattr(drv, "sample_videos", record)
    return seen, Stop
