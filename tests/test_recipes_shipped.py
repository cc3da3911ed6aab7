"""The shipped recipes load, validate, open with their launch command, and express the paper's models."""

from pathlib import Path

import pytest
import torch

from hpdm_cli.model import HPDMNet
from hpdm_cli.recipe import available_recipes, default_recipe_path, load_recipe

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["tiny", "shapes", "shapes-guide", "shapes128", "shapes128-grown", "ucf", "t2v"]


def test_top_level_recipes_are_the_packaged_ones():
    assert sorted(available_recipes()) == sorted(NAMES)
    for n in NAMES:
        assert (ROOT / "recipes" / f"{n}.toml").resolve() == default_recipe_path(n).resolve()


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_and_opens_with_its_launch_command(name):
    path = ROOT / "recipes" / f"{name}.toml"
    load_recipe(path)                                                    # loads and validates
    first = path.read_text().splitlines()[:4]
    assert first[0].startswith("#") and any("hpdm" in line for line in first), first


def test_paper_configurations():
    ucf = load_recipe(ROOT / "recipes" / "ucf.toml")
    assert ucf.pyramid.num_levels == 3
    assert [ucf.pyramid.level_resolution(l) for l in range(3)] == [(16, 64, 64), (32, 128, 128), (64, 256, 256)]
    assert ucf.model.resolved_load(3) == [1, 1, 2, 2, 3, 3]
    t2v = load_recipe(ROOT / "recipes" / "t2v.toml")
    assert [t2v.pyramid.level_resolution(l) for l in range(4)] == [
        (8, 36, 64), (16, 72, 128), (32, 144, 256), (64, 288, 512)]
    assert t2v.model.resolved_load(4) == [1, 1, 2, 2, 3, 4]


@pytest.mark.parametrize("latent,expected_m", [(256, 105.2), (512, 180.5), (1024, 468.3)])
def test_hpdm_s_m_l_parameter_counts(latent, expected_m):
    """HPDM-S/M/L are expressible as overrides; their sizes are the ones the README explains."""
    r = load_recipe(ROOT / "recipes" / "ucf.toml", [f"model.latent_dim={latent}"])
    with torch.device("meta"):
        net = HPDMNet(r.pyramid, r.model)
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - expected_m) < 0.1


@pytest.mark.parametrize("name,base,noise", [("shapes", "[4,16,16]", ["diffusion.p_mean=-0.5", "diffusion.p_std=1.6"]),
                                             ("shapes128", "[8,32,32]", ["diffusion.p_mean=0.8"])])
def test_the_base_level_alone_stage_of_the_header_loads(name, base, noise):
    """The header's first stage (one level, the base level alone) is a valid recipe: per-level lists
    (the noise's are overridden, guidance and steps keep their first entry) fit one level."""
    assert all(o in (ROOT / "recipes" / f"{name}.toml").read_text() for o in noise)   # as the header says
    rec = load_recipe(ROOT / "recipes" / f"{name}.toml", [f"pyramid.resolution={base}", f"pyramid.patch={base}",
                                                          *noise])
    assert rec.pyramid.num_levels == 1
    from hpdm_cli.sampling import level_steps
    from hpdm_cli.sampling.hierarchical import level_guidance
    assert level_steps(rec.sample, 1) == [32] and level_guidance(rec.sample.guidance, 1) == [1.5]
