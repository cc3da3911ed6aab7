"""Tests of the recipe system (TOML -> typed Recipe): strictness, overrides, errors, dump/load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomli_w

from hpdm_cli import recipe as recipe_mod
from hpdm_cli.config import ConfigError, Recipe
from hpdm_cli.recipe import (
    apply_overrides,
    available_recipes,
    default_recipe_path,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_from_toml,
    recipe_to_dict,
    recipe_to_toml,
)

SRC = "recipes/x.toml"

TINY = """
[data]
path = "data/synthetic"
fps = 8

[pyramid]
resolution = [8, 32, 32]
patch = [4, 8, 8]

[model]
tokenizer = [1, 2, 2]
interface_dim = 64
latent_dim = 64
num_latents = 16
num_blocks = 3
compute_layers = 1
head_dim = 32
load = [1, 2, 3]

[train]
steps = 10
batch_size = 4
betas = [0.9, 0.99]

[sample]
level_steps = [8, 4, 2]
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def err(d: dict, source: str = SRC) -> str:
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(d, source=source)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- building

def test_empty_dict_gives_defaults():
    assert recipe_from_dict({}) == Recipe()


def test_tiny_recipe_loads_typed(tmp_path):
    r = load_recipe(write(tmp_path, TINY))
    assert r.pyramid.resolution == (8, 32, 32) and isinstance(r.pyramid.resolution, tuple)
    assert r.model.tokenizer == (1, 2, 2)
    assert r.train.betas == (0.9, 0.99)
    assert r.data.fps == 8.0 and isinstance(r.data.fps, float)  # int accepted for float
    assert r.model.load == [1, 2, 3]
    assert r.sample.level_steps == [8, 4, 2]
    assert r.pyramid.num_levels == 3
    assert r.model.latent_dim == 64 and r.model.mlp_ratio == 4.0  # given and default


def test_unknown_key_with_suggestion():
    msg = err({"model": {"latnt_dim": 128}})
    assert msg == f"{SRC}: unknown key model.latnt_dim (did you mean model.latent_dim?)"


@pytest.mark.parametrize("key,meant", [("LR", "lr"), ("Batch_Size", "batch_size"), ("epochs", "steps"),
                                       ("learning_rate", "lr"), ("bacth_size", "batch_size")])
def test_unknown_key_suggests_the_key_meant_not_a_lookalike(key, meant):
    """Case is ignored, and other tools' names lead to ours: `epochs` must not suggest `eps` (Adam's epsilon)."""
    assert err({"train": {key: 3}}) == f"{SRC}: unknown key train.{key} (did you mean train.{meant}?)"


def test_a_recipe_file_with_a_byte_order_mark_reads_and_other_encodings_name_their_line(tmp_path):
    p = tmp_path / "r.toml"
    p.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert load_recipe(p).model.latent_dim == 64
    p.write_bytes(b"[train]\n# caf\xe9\nlr = 0.1\n")                        # Latin-1
    with pytest.raises(ConfigError, match=r"r.toml:2: invalid TOML: not UTF-8 text \(byte 13\); save the file as UTF-8"):
        load_recipe(p)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_recipe_file_is_refused_not_taken_for_the_defaults(tmp_path, text):
    with pytest.raises(ConfigError, match=r"r.toml: the recipe is empty .*recipes/tiny.toml$"):
        load_recipe(write(tmp_path, text))


def test_unknown_key_in_wrong_section_points_to_right_one():
    msg = err({"model": {"warmup_steps": 3}})
    assert "model.warmup_steps" in msg and "train.warmup_steps" in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = err({"eval": {"qqqqqq": 1}})
    assert "eval.qqqqqq" in msg and "num_clips" in msg and SRC in msg


def test_unknown_section():
    msg = err({"modle": {"latent_dim": 128}})
    assert SRC in msg and "unknown section modle" in msg and "did you mean model" in msg
    msg = err({"optimizer": {}})
    assert "unknown section optimizer" in msg and "train" in msg


def test_section_must_be_a_table():
    msg = err({"model": 3})
    assert SRC in msg and "model" in msg and "table" in msg


@pytest.mark.parametrize("section,key,value,expected", [
    ("model", "num_blocks", "six", "integer"),         # string for int
    ("model", "num_blocks", 6.0, "integer"),           # float for int
    ("model", "num_blocks", True, "integer"),          # bool for int
    ("pyramid", "patch", [16, 64], "list of 3 integers"),  # 2 entries for a 3-vector
    ("pyramid", "patch", [16, 64.0, 64], "list of 3 integers"),
    ("pyramid", "patch", "16x64x64", "list of 3 integers"),
    ("train", "betas", [0.9], "list of 2 numbers"),
    ("train", "compile", 1, "boolean"),                # 0/1 is not a bool
    ("train", "lr", "0.1", "number"),
    ("train", "lr", True, "number"),
    ("data", "path", 3, "string"),
    ("model", "load", 3, "string or a list of integers"),
    ("model", "load", [1, 2.5], "string or a list of integers"),
    ("sample", "level_steps", 3, "list"),
])
def test_wrong_types(section, key, value, expected):
    msg = err({section: {key: value}})
    assert msg.startswith(f"{SRC}: {section}.{key}:")
    assert expected in msg
    assert recipe_mod._show(value) in msg  # the value given


def test_int_accepted_for_float():
    r = recipe_from_dict({"train": {"lr": 1, "betas": [0, 0]}, "diffusion": {"sigma_data": 1}})
    assert r.train.lr == 1.0 and type(r.train.lr) is float
    assert r.train.betas == (0.0, 0.0) and all(type(b) is float for b in r.train.betas)
    assert type(r.diffusion.sigma_data) is float


@pytest.mark.parametrize("d,key", [
    ({"pyramid": {"resolution": [64, 256, 256], "patch": [16, 48, 64]}}, "pyramid.patch"),   # not dividing
    ({"pyramid": {"resolution": [64, 192, 256], "patch": [16, 64, 64]}}, "pyramid.patch"),   # ratio not 2^k
    ({"model": {"tokenizer": [1, 3, 4]}}, "model.tokenizer"),                                # not dividing patch
    ({"model": {"load": [1, 1, 2, 2, 3, 3, 3]}}, "model.load"),                              # longer than blocks
    ({"model": {"load": [1, 1, 2, 2, 2, 2]}}, "model.load"),                                 # misses last level (L=3)
    ({"model": {"load": "quadratic"}}, "model.load"),
    ({"model": {"fusion": "medium"}}, "model.fusion"),
    ({"model": {"pos_embed": "rope"}}, "model.pos_embed"),
    ({"model": {"pos_embed": "fourier", "pos_fixed_levels": "top"}}, "model.pos_fixed_levels"),
    ({"model": {"pos_fixed_levels": "base"}}, "model.pos_fixed_levels"),                  # no fixed table to place
    ({"model": {"pos_embed": "fourier", "pos_fixed_scale": 0}}, "model.pos_fixed_scale"),
    ({"model": {"pos_fixed_scale": 0.5}}, "model.pos_fixed_scale"),                      # no fixed table to scale
    ({"model": {"pos_embed": "fourier", "pos_fixed_sigma": [1.0]}}, "model.pos_fixed_sigma"),
    ({"model": {"pos_embed": "fourier", "pos_fixed_sigma": [2.0, 1.0]}}, "model.pos_fixed_sigma"),
    ({"model": {"pos_embed": "fourier", "pos_fixed_sigma": [0.0, 1.0]}}, "model.pos_fixed_sigma"),
    ({"model": {"pos_fixed_sigma": [0.5, 2.0]}}, "model.pos_fixed_sigma"),                 # no fixed table to gate
    ({"model": {"pos_embed": "fourier", "pos_fixed_into": "keys"}}, "model.pos_fixed_into"),
    ({"model": {"pos_fixed_into": "attention"}}, "model.pos_fixed_into"),                 # no fixed table to place
    ({"model": {"pos_fixed_trainable": True}}, "model.pos_fixed_trainable"),               # no fixed table to train
    ({"model": {"pos_fixed_subtract": True}}, "model.pos_fixed_subtract"),                 # no fixed table to subtract
    ({"model": {"pos_embed": "fourier", "pos_fixed_into": "read", "pos_fixed_subtract": True}},
     "model.pos_fixed_subtract"),                                                         # not in the tokens
    ({"model": {"adaptive_norm_interface": True}}, "model.adaptive_norm_interface"),     # without adaptive_norm
    ({"model": {"fusion": "shallow", "fusion_edges": True}}, "model.fusion_edges"),     # edges need deep fusion
    ({"diffusion": {"p_mean": [0.8, -1.2]}}, "diffusion.p_mean"),                         # one per level, 3 levels
    ({"diffusion": {"p_mean": [0.8, "x", -1.2]}}, "diffusion.p_mean"),
    ({"diffusion": {"p_std": [1.4, 1.2]}}, "diffusion.p_std"),                            # one per level, 3 levels
    ({"diffusion": {"p_std": [1.4, -1.0, 1.2]}}, "diffusion.p_std[1]"),
    ({"diffusion": {"p_mean_start": [1.0, -1.2]}}, "diffusion.p_mean_start"),            # one per level, 3 levels
    ({"diffusion": {"p_mean_start": [1.0, "x", -1.2]}}, "diffusion.p_mean_start"),
    ({"diffusion": {"p_mean_start": float("nan")}}, "diffusion.p_mean_start"),
    ({"diffusion": {"context_prob_start": 1.5}}, "diffusion.context_prob_start"),         # a probability
    ({"diffusion": {"context_prob_start": [0.0, 0.5, 0.5]}}, "diffusion.context_prob_start"),   # one number
    ({"pyramid": {"offsets": "diagonal"}}, "pyramid.offsets"),
    ({"pyramid": {"offsets": "tiles", "resolution": [12, 256, 256], "patch": [3, 64, 64], "overlap": "fhw"}},
     "pyramid.offsets"),                                                    # half tiles of an odd patch
    ({"train": {"precision": "fp8"}}, "train.precision"),
    ({"model": {"latent_dim": 100}}, "model.latent_dim"),
    ({"pyramid": {"overlap": "fx"}}, "pyramid.overlap"),
    ({"pyramid": {"overlap": "hwh"}}, "pyramid.overlap"),
    ({"pyramid": {"overlap": "h+shift-hw"}}, "pyramid.overlap"),                         # an axis overlaps and shifts
])
def test_inconsistent_recipe_names_key_and_file(d, key):
    msg = err(d)
    assert msg.startswith(f"{SRC}: ")
    assert key in msg


@pytest.mark.parametrize("spelling", ["WH", " hw ", "none", "", "Shift-WH"])
def test_recipe_overlap_takes_every_spelling_the_sampler_takes(spelling):
    """pyramid.overlap and the sampling options follow one rule: a spelling tiles the same either way."""
    from hpdm_cli.sampling import build_tiles, parse_overlap
    r = recipe_from_dict({"pyramid": {"overlap": spelling}})
    canonical = parse_overlap(spelling)
    assert canonical in ("hw", "", "shift-hw")
    assert [t.counts for t in build_tiles(r.pyramid, r.pyramid.overlap)] == \
        [t.counts for t in build_tiles(r.pyramid, canonical or "none")]


def test_an_odd_patch_under_its_overlap_loads_unless_training_on_tiles():
    """A recipe (or a checkpoint's) whose own overlap cannot tile an odd patch still loads: it samples with another
    --overlap; the axis is named for the warnings and errors."""
    r = recipe_from_dict({"pyramid": {"resolution": [8, 36, 36], "patch": [4, 9, 9], "overlap": "shift-hw"},
                          "model": {"tokenizer": [1, 3, 3]}})
    assert r.pyramid.odd_half_tile_axis() == "h" and r.pyramid.odd_half_tile_axis("f") == ""


def test_tile_offsets_take_any_tiling_their_patch_can_halve():
    """pyramid.offsets = "tiles" with an odd patch along an axis the tiling does not halve is a valid recipe."""
    r = recipe_from_dict({"pyramid": {"offsets": "tiles", "resolution": [12, 256, 256], "patch": [3, 64, 64],
                                      "overlap": "shift-hw"}})
    assert r.pyramid.pixel_grid_offsets and r.pyramid.offsets == "tiles"


def test_inconsistent_recipe_from_file_names_file(tmp_path):
    p = write(tmp_path, TINY.replace("load = [1, 2, 3]", "load = [1, 2, 2]"))
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}: ") and "model.load" in str(e.value)


def test_validate_crash_becomes_config_error():
    # head_dim = 0 makes validate() divide by zero; the user still gets a ConfigError.
    msg = err({"model": {"head_dim": 0}})
    assert msg.startswith(f"{SRC}: ")


def test_input_dict_not_mutated():
    d = {"pyramid": {"patch": [16, 64, 64]}, "model": {"load": [1, 1, 2, 2, 3, 3]}}
    r = recipe_from_dict(d)
    r.model.load.append(9)
    assert d["model"]["load"] == [1, 1, 2, 2, 3, 3]


# --------------------------------------------------------------------------- overrides

def test_overrides_values(tmp_path):
    p = write(tmp_path, TINY)
    r = load_recipe(p, [
        "model.latent_dim=128",              # int
        "train.lr=1e-3",                     # float
        "diffusion.sigma_data=1",            # int for float
        "train.compile=true",                # bool
        "pyramid.overlap=hw",                # bare string
        'model.fusion="shallow"',            # quoted string
        "data.path=/tmp/some dir/x",         # bare path with a space
        "model.load=[1, 1, 3]",              # list
        "train.betas=[0.8, 0.9]",            # list -> tuple
        " model.cond = none ",               # whitespace around key and value
        "train.init_from=2024-01-01",        # parses as a TOML date, kept as text for a str field
    ])
    assert r.model.latent_dim == 128
    assert r.train.lr == 1e-3
    assert r.diffusion.sigma_data == 1.0 and type(r.diffusion.sigma_data) is float
    assert r.train.compile is True
    assert r.pyramid.overlap == "hw"
    assert r.model.fusion == "shallow"
    assert r.data.path == "/tmp/some dir/x"
    assert r.model.load == [1, 1, 3]
    assert r.train.betas == (0.8, 0.9)
    assert r.model.cond == "none"
    assert r.train.init_from == "2024-01-01"


def test_override_adds_missing_section():
    d = apply_overrides({}, ["eval.frames=8"], source=SRC)
    assert d == {"eval": {"frames": 8}}
    assert recipe_from_dict(d).eval.frames == 8


def test_override_does_not_mutate_input():
    d = {"model": {"latent_dim": 64}}
    apply_overrides(d, ["model.latent_dim=128"], source=SRC)
    assert d == {"model": {"latent_dim": 64}}


@pytest.mark.parametrize("ov,fragment", [
    ("model.latnt_dim=3", "did you mean model.latent_dim?"),   # unknown key
    ("modle.latent_dim=3", "unknown section modle"),           # unknown section
    ("model.latent_dim", "section.key=value"),                 # no '='
    ("latent_dim=3", "section.key=value"),                     # no dot
    ("model.=3", "section.key=value"),                         # empty key
    ("model.latent_dim=big", "expected an integer"),           # bare string for an int
    ("model.latent_dim=1.5", "expected an integer"),
    ("train.compile=1", "expected a boolean"),
    ("pyramid.patch=[4, 8]", "list of 3 integers"),
    ("pyramid.patch=4,8,8", "a list goes in brackets: 'pyramid.patch=[4,8,8]'"),    # what a shell user types
    ("model.latent_dim.x=3", "not a section"),
])
def test_bad_overrides_name_the_override(tmp_path, ov, fragment):
    p = write(tmp_path, TINY)
    with pytest.raises(ConfigError) as e:
        load_recipe(p, [ov])
    msg = str(e.value)
    assert str(p) in msg and repr(ov) in msg and fragment in msg
    assert "\n" not in msg


def _scalar_keys(kind: type) -> list[str]:
    """Every dotted key of the recipe whose field is a scalar of type `kind` (float or int)."""
    import typing
    return [f"{section}.{k}" for section, cls in typing.get_type_hints(Recipe).items()
            for k, tp in typing.get_type_hints(cls).items() if tp is kind]


def test_every_number_is_range_checked():
    assert "train.lr" in _scalar_keys(float) and "train.ckpt_every" in _scalar_keys(int)
    for key in _scalar_keys(float):
        for bad in (float("nan"), float("inf"), float("-inf")):
            section, name = key.split(".")
            msg = err({section: {name: bad}})
            assert msg.startswith(f"{SRC}: {key} = ") and "expected a finite number" in msg, (key, msg)
    for key in _scalar_keys(int):
        section, name = key.split(".")
        msg = err({section: {name: -1}})
        assert msg.startswith(f"{SRC}: {key} = -1: expected an integer"), (key, msg)


@pytest.mark.parametrize("ov,expected", [
    ("train.lr=nan", "train.lr = nan: expected a finite number > 0"),
    ("train.lr=-1", "train.lr = -1.0: expected a finite number > 0"),
    ("train.lr=inf", "train.lr = inf: expected a finite number > 0"),
    ("train.lr=0", "train.lr = 0.0: expected a finite number > 0"),
    ("train.ckpt_every=0", "train.ckpt_every = 0: expected an integer >= 1"),
    ("train.log_every=0", "train.log_every = 0: expected an integer >= 1"),
    ("train.keep_last=-1", "train.keep_last = -1: expected an integer >= 0 (0 = keep every checkpoint)"),
    ("train.max_nonfinite_steps=-2", "train.max_nonfinite_steps = -2: expected an integer >= 0"),
    ("train.betas=[0.9, 1.0]", "train.betas[1] = 1.0: expected a finite number in [0, 1)"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio = 1.5: expected a finite number in [0, 1]"),
    ("train.seed=-3", "train.seed = -3: expected an integer in [0, 4294967295]"),
    ("train.steps=99999999999999999999999", "expected an integer in [0, 10000000000]"),     # overflowed the loader
    ("train.batch_size=100000000", "expected an integer in [1, 1048576]"),                  # killed for memory
    ("train.device=\"gpu\"", "train.device = 'gpu': expected \"auto\", \"cpu\" or \"cuda\""),
    ("train.noise_on=\"gpu\"", "train.noise_on = 'gpu': expected \"device\" or \"host\""),
    ("diffusion.self_cond_prob=2", "diffusion.self_cond_prob = 2.0: expected a finite number in [0, 1]"),
    ("diffusion.context_sigma=nan", "diffusion.context_sigma = nan: expected a finite number > 0"),
    ("data.fps=0", "data.fps = 0.0: expected a finite number in [0.01, 1000]"),
    ("data.num_workers=-1", "data.num_workers = -1: expected an integer >= 0"),
    ("model.latent_dim=0", "model.latent_dim = 0: expected an integer >= 1"),
    ("model.mlp_ratio=0.001", "model.mlp_ratio = 0.001: gives an MLP of width 0"),
    ("sample.guidance=1e300", "sample.guidance = 1e+300: expected a finite number in [0, 100] (1 = no guidance)"),
    ("sample.guidance=-1", "sample.guidance = -1.0: expected a finite number in [0, 100]"),
    ("train.compile=\"fast\"", "train.compile = 'fast': expected true, false or a torch.compile mode"),
    ("train.compile_scope=\"layers\"", "train.compile_scope = 'layers': expected \"model\" or \"blocks\""),
    ("sample.guidance=[3, 1]", "sample.guidance = [3.0, 1.0]: 2 entries for 3 pyramid levels"),
    ("sample.guidance=[3, 1, 200]", "sample.guidance[2] = 200.0: expected a finite number in [0, 100]"),
    ("sample.level_steps=[8, 0, 2]", "sample.level_steps[1] = 0: expected an integer in [1, 100000]"),
    ("sample.level_steps=[8, 4]", "sample.level_steps = [8, 4]: 2 entries for 3 pyramid levels"),
    ("sample.sigma_min=100", "sample.sigma_min = 100.0 is above sample.sigma_max = 80.0"),
    ("sample.sigma_max=[80, 10]", "sample.sigma_max = [80.0, 10.0]: 2 entries for 3 pyramid levels"),
    ("sample.sigma_max=[80, 10, -1]", "sample.sigma_max[2] = -1.0: expected a finite number > 0"),
    ("sample.sigma_max=[80, 10, 0.001]", "sample.sigma_min = 0.002 is above sample.sigma_max = [80.0, 10.0, 0.001]"),
    ("eval.batch_size=0", "eval.batch_size = 0: expected an integer >= 1"),
    ("sample.guidance_interval=[5, 0.3]", "sample.guidance_interval = [5.0, 0.3]: expected [lo, hi] with 0 <= lo < hi"),
    ("sample.guidance_interval=[0.3]", "sample.guidance_interval = [0.3]: expected [lo, hi] with 0 <= lo < hi"),
    ("sample.guidance_interval=[-1, 3]", "sample.guidance_interval = [-1.0, 3.0]: expected [lo, hi]"),
])
def test_out_of_range_values_name_key_and_range(tmp_path, ov, expected):
    p = write(tmp_path, TINY)
    with pytest.raises(ConfigError) as e:
        load_recipe(p, [ov])
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and expected in msg and "\n" not in msg


def test_override_inconsistent_value_is_validated(tmp_path):
    p = write(tmp_path, TINY)
    with pytest.raises(ConfigError) as e:
        load_recipe(p, ["model.num_blocks=4"])  # load has 3 entries
    assert str(p) in str(e.value) and "model.load" in str(e.value)


# --------------------------------------------------------------------------- files

def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "[model]\nlatent_dim = 64\nnum_blocks = = 3\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "line 3" in msg and "\n" not in msg


def test_not_utf8(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_bytes(b"[model]\nfusion = \"\xff\"\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "not found" in str(e.value)


def test_directory_is_not_a_recipe(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_recipe_from_toml_string():
    r = recipe_from_toml(TINY, ["train.steps=3"], source="ckpt")
    assert r.train.steps == 3
    with pytest.raises(ConfigError, match="^ckpt: "):
        recipe_from_toml("[model\n", source="ckpt")


def test_to_dict_is_fully_resolved_and_plain():
    d = recipe_to_dict(Recipe())
    assert set(d) == {"data", "pyramid", "model", "diffusion", "train", "sample", "eval"}
    assert d["pyramid"]["resolution"] == [64, 256, 256] and isinstance(d["pyramid"]["resolution"], list)
    assert d["train"]["betas"] == [0.9, 0.999]
    assert "mlp_ratio" in d["model"] and "level_steps" in d["sample"]


def test_round_trip_dict_and_toml(tmp_path):
    r = load_recipe(write(tmp_path, TINY), ["model.fusion=shallow"])
    assert recipe_from_dict(recipe_to_dict(r)) == r
    assert recipe_from_toml(recipe_to_toml(r)) == r
    assert recipe_from_dict(recipe_to_dict(Recipe())) == Recipe()


@pytest.mark.parametrize("start", ["[]", "1.0", "[1.0,-1.2,-1.2]"])
def test_p_mean_start_round_trips_through_toml(start):
    import json
    r = recipe_from_toml("", [f"diffusion.p_mean_start={start}"])
    assert recipe_from_toml(recipe_to_toml(r)) == r and r.diffusion.p_mean_start == json.loads(start)


@pytest.mark.parametrize("start", ["[]", "0.0", "0.4"])
def test_context_prob_start_round_trips_through_toml(start):
    import json
    r = recipe_from_toml("", [f"diffusion.context_prob_start={start}"])
    assert recipe_from_toml(recipe_to_toml(r)) == r and r.diffusion.context_prob_start == json.loads(start)
    assert r.diffusion.context_ramped == (start != "[]")


def test_dump_load_round_trip(tmp_path):
    r = load_recipe(write(tmp_path, TINY), ["train.lr=3e-4", "model.load=linear"])
    out = tmp_path / "run" / "recipe.toml"
    dump_recipe(r, out)
    assert load_recipe(out) == r
    assert out.read_text() == recipe_to_toml(r)
    assert [p.name for p in out.parent.iterdir()] == ["recipe.toml"]


def test_dump_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "recipe.toml"
    first = load_recipe(write(tmp_path / "", TINY, "src.toml"))
    dump_recipe(first, out)
    before = out.read_bytes()

    def boom(obj, fp, **kw):
        fp.write(b"[model]\nlatent_di")  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(tomli_w, "dump", boom)
    changed = load_recipe(tmp_path / "src.toml", ["model.latent_dim=128"])
    with pytest.raises(OSError, match="disk full"):
        dump_recipe(changed, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml", "src.toml"]
    assert load_recipe(out) == first


def test_dump_keeps_file_mode(tmp_path):
    out = tmp_path / "recipe.toml"
    out.write_text("")
    os.chmod(out, 0o640)
    dump_recipe(Recipe(), out)
    assert out.stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- names

def test_default_recipe_path_existing_path(tmp_path):
    p = write(tmp_path, TINY)
    assert default_recipe_path(str(p)) == p


def test_default_recipe_path_packaged(tmp_path, monkeypatch):
    pkg = tmp_path / "recipes"
    pkg.mkdir()
    (pkg / "tiny.toml").write_text(TINY)
    (pkg / "ucf101_s.toml").write_text("")
    monkeypatch.setattr(recipe_mod, "_PACKAGED_RECIPES", pkg)
    monkeypatch.chdir(tmp_path)  # "tiny" is not a file in the working directory
    assert default_recipe_path("tiny") == pkg / "tiny.toml"
    assert default_recipe_path("tiny.toml") == pkg / "tiny.toml"
    assert available_recipes() == ["tiny", "ucf101_s"]
    with pytest.raises(ConfigError) as e:
        default_recipe_path("huge")
    assert "huge" in str(e.value) and "tiny, ucf101_s" in str(e.value)


def test_default_recipe_path_real_package_names_resolve():
    for name in available_recipes():
        assert default_recipe_path(name).is_file()


def test_train_compile_takes_a_flag_or_a_torch_compile_mode(monkeypatch):
    """train.compile: false keeps the module, true compiles it, a mode name is passed on to torch.compile."""
    import torch

    from hpdm_cli.train.step import compile_model
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **k: calls.append(k) or ("compiled", m))
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, False) is net and calls == []
    assert compile_model(net, True) == ("compiled", net) and calls == [{}]
    assert compile_model(net, "reduce-overhead") == ("compiled", net) and calls[-1] == {"mode": "reduce-overhead"}
    ucf = Path(__file__).resolve().parents[1] / "recipes" / "ucf.toml"
    assert load_recipe(ucf, ['train.compile="max-autotune"']).train.compile == "max-autotune"


def test_a_folder_given_as_a_recipe_says_so(tmp_path):
    from hpdm_cli.recipe import default_recipe_path
    with pytest.raises(ConfigError, match="is a folder, not a recipe"):
        default_recipe_path(tmp_path)


# Overrides holding "=" or several lines; per-level lists, intervals and fractions out of range

def test_override_value_may_contain_equals():
    from hpdm_cli.recipe import apply_overrides
    assert apply_overrides({}, ["data.path=/a=b"])["data"]["path"] == "/a=b"


def test_override_of_two_toml_lines_is_refused():
    with pytest.raises(ConfigError):
        from hpdm_cli.recipe import apply_overrides
        apply_overrides({}, ["model.num_blocks=4\nmodel.latent_dim = 2"])


def test_p_mean_with_too_many_entries_is_refused():
    from hpdm_cli.recipe import recipe_from_dict
    with pytest.raises(ConfigError, match="p_mean"):
        recipe_from_dict({"diffusion": {"p_mean": [0.8, -1.2, -2.0, -3.0]}})


def test_empty_guidance_interval_is_refused():
    from hpdm_cli.recipe import recipe_from_dict
    with pytest.raises(ConfigError, match="guidance_interval"):
        recipe_from_dict({"sample": {"guidance_interval": [1.0, 1.0]}})


def test_image_fraction_without_an_image_dataset_is_refused():
    """Joint image+video training asked for with nowhere to read images from would train on videos alone."""
    with pytest.raises(ConfigError, match="image_fraction = 0.5 asks for still images .* data.image_path is empty"):
        recipe_from_dict({"data": {"image_fraction": 0.5}})
    assert recipe_from_dict({"data": {"image_fraction": 0.5, "image_path": "data/images"}}).data.image_fraction == 0.5


def test_image_fraction_above_one_is_refused():
    from hpdm_cli.recipe import recipe_from_dict
    with pytest.raises(ConfigError, match="image_fraction"):
        recipe_from_dict({"data": {"image_fraction": 1.5}})
