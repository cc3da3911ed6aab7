"""`hpdm bench --memory-chart`: training peak memory against resolution, the chart, the command's checks."""

import json

import numpy as np
import pytest
from conftest import run_cli, strict_json

from hpdm_cli.config import ConfigError
from hpdm_cli.drivers import memory_chart as mc


def test_resolutions_are_parsed_and_a_bad_one_named():
    assert mc.parse_resolutions("16x64x64, 64X256X256") == [(16, 64, 64), (64, 256, 256)]
    with pytest.raises(ConfigError, match="'64x256': expected FRAMESxHEIGHTxWIDTH"):
        mc.parse_resolutions("16x64x64,64x256")


def _capacity_row(img):
    red = np.all(img == mc.RED, axis=-1).sum(1)
    return int(red.argmax())


def test_chart_draws_curves_the_capacity_line_and_an_oom_mark():
    res = [[16, 64, 64], [32, 128, 128], [64, 256, 256]]
    points = {"hpdm": [{"resolution": r, "status": "ok", "peak_mem_GiB": g} for r, g in zip(res, (2, 3, 4))],
              "unet3d": [{"resolution": res[0], "status": "ok", "peak_mem_GiB": 30.0},
                         {"resolution": res[1], "status": "oom"}, {"resolution": res[2], "status": "skipped"}]}
    img = mc.draw_chart(points, 80.0, "test")
    assert img.shape == (560, 960, 3) and img.dtype == np.uint8
    for name in points:
        assert np.all(img == mc.COLOURS[name], axis=-1).sum() > 50
    yc = _capacity_row(img)
    left, pw = mc.MARGINS["left"], 960 - mc.MARGINS["left"] - mc.MARGINS["right"]

    def unet_pixels_near_capacity(image, i):
        x = int(round(left + (i + 0.5) * pw / 3))
        band = image[yc - 7:yc + 8, x - 7:x + 8]
        return np.all(band == mc.COLOURS["unet3d"], axis=-1).sum()
    assert unet_pixels_near_capacity(img, 1) > 10                          # the X at the capacity line
    assert unet_pixels_near_capacity(img, 2) == 0                          # nothing for a skipped size
    points["unet3d"][1] = {"resolution": res[1], "status": "ok", "peak_mem_GiB": 40.0}
    assert unet_pixels_near_capacity(mc.draw_chart(points, 80.0, "test"), 1) == 0


def test_measure_marks_oom_skips_larger_sizes_and_reports_every_point():
    def fake_hpdm(res):
        if res[0] >= 32:
            raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return {"peak_mem_GiB": 1.0}

    def fake_unet(res):
        if res[0] >= 32:
            raise ValueError("input tensor must fit into 32-bit index math")
        return {"peak_mem_GiB": 2.0}
    seen = []
    points = mc.measure({"hpdm": fake_hpdm, "unet3d": fake_unet}, [(16, 64, 64), (32, 128, 128), (64, 256, 256)],
                        report=lambda p: seen.append(sum(len(v) for v in p.values())), log=lambda s: None)
    assert [r["status"] for r in points["hpdm"]] == ["ok", "oom", "skipped"]
    assert [r["status"] for r in points["unet3d"]] == ["ok", "error", "skipped"]
    assert "32-bit index math" in points["unet3d"][1]["reason"]
    assert seen == [1, 2, 3, 4, 5, 6]


def test_the_command_measures_each_size_and_writes_the_chart_and_json(tmp_path, capsys):
    """On the CPU the steps run (no memory figures there); the PNG and JSON hold every size (in folders it made)."""
    png, js = tmp_path / "charts" / "m.png", tmp_path / "json" / "m.json"
    code, out, err = run_cli(capsys, "bench", "recipes/tiny.toml", "--memory-chart", str(png), "--json", str(js),
                             "--resolutions", "4x8x8,8x16x16", "--no-baseline")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = strict_json(js.read_text())["points"]["hpdm"]
    assert [r["resolution"] for r in rows] == [[4, 8, 8], [8, 16, 16]]
    assert [r["peak_mem_GiB"] for r in rows] == [None, None]                        # no figure on a CPU: null
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["levels"] for r in rows] == [1, 2]
    assert "8x16x16" in out and "ok (CPU)" in out
    mc._check_target(js, "--json")                          # a re-run may replace its own report


@pytest.mark.parametrize("args,message", [
    (["--resolutions", "4x8"], "--resolutions: '4x8': expected FRAMESxHEIGHTxWIDTH"),
    (["--sampling"], "--sampling: not used by --memory-chart"),
    (["--steps", "3", "--batch", "2"], "--steps, --batch: not used by --memory-chart"),
    (["--compile", "--resolutions", "4x8x8"], "--compile: not used by --memory-chart"),
    (["--memory-chart", "{dir}/chart.txt"], "expected a .png file name"),
    (["--memory-chart", "/dev/null/chart.png"], "'/dev/null' is a file, not a folder"),
    (["--resolutions", "4x8x8,8x33x32"], "--resolutions 8x33x32: "),          # a size the patches cannot tile
    (["--json", "{dir}/mine.json"], "already holds a file that is not an `hpdm bench --memory-chart` report"),
])
def test_bad_memory_chart_options_are_one_line_errors(tmp_path, capsys, args, message):
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    mine = tmp_path / "mine.json"
    if str(mine) in args:                                  # another tool's JSON: refused, kept as it was
        mine.write_text('{"mine": 1}')
        code, out, err = run_cli(capsys, "bench", "recipes/tiny.toml", "--memory-chart", str(tmp_path / "m.png"),
                                 *args, "--no-baseline")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert mine.read_text() == '{"mine": 1}' and sorted(tmp_path.iterdir()) == [mine]
        return
    chart = [] if "--memory-chart" in args else ["--memory-chart", str(tmp_path / "m.png")]
    code, out, err = run_cli(capsys, "bench", "recipes/tiny.toml", *chart, *args, "--no-baseline")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_options_of_the_chart_alone_are_refused_without_it(capsys):
    code, _, err = run_cli(capsys, "bench", "recipes/tiny.toml", "--no-baseline")
    assert code == 2 and "--no-baseline only applies with --memory-chart" in err


def test_a_missing_baseline_package_is_named_with_its_fix(monkeypatch):
    import importlib

    def absent(name, *a, **k):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
    monkeypatch.setattr(importlib, "import_module", absent)
    with pytest.raises(ConfigError, match=r"video-diffusion-pytorch .*'hpdm\[bench\]', or pass --no-baseline"):
        mc.baseline_module()


def test_zero_sized_resolution_is_refused():
    from hpdm_cli.config import ConfigError
    with pytest.raises(ConfigError):
        mc.parse_resolutions("0x8x8")


def test_summary_prints_two_decimals():
    s = mc.summary({"hpdm": [{"resolution": [4, 8, 8], "status": "ok", "peak_mem_GiB": 1.234}]})
    assert "1.23" in s


def _chart():
    pts = {"hpdm": [{"resolution": r, "status": "ok", "peak_mem_GiB": g}
                    for r, g in zip([[16, 64, 64], [32, 128, 128]], (2.0, 4.0))]}
    return mc.draw_chart(pts, 80.0, "t")


def test_more_memory_is_drawn_higher_and_the_capacity_line_inside_the_plot():
    img = _chart()
    red = np.all(img == mc.RED, axis=-1).sum(1)
    yc = int(red.argmax())
    assert red[yc] > 300 and mc.MARGINS["top"] < yc < img.shape[0] - mc.MARGINS["bottom"]   # a full-width line
    ys = np.nonzero(np.all(img == mc.COLOURS["hpdm"], axis=-1))[0]
    assert yc < np.median(ys)                  # 80 GiB above 2-4 GiB (legend swatch aside)


def test_card_capacity_is_in_gib(tmp_path, monkeypatch):
    import types
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "fake")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(total_memory=80 * 2 ** 30))
    monkeypatch.setattr(mc, "hpdm_point", lambda path, ov: (lambda res: {"peak_mem_GiB": 1.0}))
    js = tmp_path / "m.json"
    mc.run_memory_chart("tiny", [], tmp_path / "m.png", json_out=js, resolutions="4x8x8", baseline=False, log=lambda s: None)
    assert json.loads(js.read_text())["capacity_GiB"] == 80.0
