"""The `hpdm` command line itself: parse errors, declared imports, `hpdm bench` inputs, finished runs.

Every mistake ends in one line on stderr and exit code 2, also on an install without `click`
(current typer releases carry their own copy of it and no longer install it).
"""

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def no_click_env(tmp_path_factory):
    """Environment whose Python cannot import `click` (a shadowing module that raises ImportError)."""
    d = tmp_path_factory.mktemp("no-click")
    (d / "click.py").write_text("raise ImportError(\"No module named 'click' (hidden by the test)\")\n")
    path = os.pathsep.join([str(d), str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return dict(os.environ, PYTHONPATH=path, COLUMNS="100")


def _run(args, env, cwd, exe=None):
    cmd = [str(exe)] if exe else [sys.executable, "-m", "hpdm_cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_click_is_really_hidden(no_click_env, tmp_path):
    r = subprocess.run([sys.executable, "-c", "import click"], capture_output=True, text=True, env=no_click_env,
                       cwd=tmp_path)
    assert r.returncode != 0 and "hidden by the test" in r.stderr


@pytest.mark.parametrize("args,names", [
    (["train"], ["RECIPE", "hpdm train --help"]),
    (["upscale", "in.mp4"], ["--ckpt", "hpdm upscale --help"]),
    (["train", "tiny", "--train.steps=10"], ["--train.steps", "train.steps=VALUE"]),
    (["sample", "--ckpt", "x", "--guidance", "high"], ["--guidance", "number"]),
    (["generate"], ["generate", "hpdm --help"]),
    (["sample", "--ckpt"], ["--ckpt"]),
], ids=["train without recipe", "upscale without --ckpt", "unknown option", "wrong type", "unknown command",
        "option without value"])
def test_parse_errors_are_one_line_and_exit_2_without_click(no_click_env, tmp_path, args, names):
    r = _run(args, no_click_env, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("hpdm: error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert all(n in lines[0] for n in names), lines[0]


@pytest.mark.parametrize("args", [
    ["eval", "--ckpt", "no-such-run", "--num", "4", "--i3d", "x.ckpt"],
    ["eval-fvd", "--real", "no-such-dir", "--fake", "no-such-dir", "--num-clips", "4", "--i3d-weights", "x.ckpt"],
], ids=["eval", "eval-fvd"])
def test_eval_and_eval_fvd_take_each_others_spelling_of_clips_and_i3d_weights(no_click_env, tmp_path, args):
    r = _run(args, no_click_env, tmp_path)
    assert r.returncode == 2 and "no-such" in r.stderr and "No such option" not in r.stderr, r.stderr


def test_eval_fvd_marks_checkpoint_options_keeping_a_leading_metavariable():
    """--fake-checkpoint options' help: "Checkpoint --fake: " + the shared text, its first word lower-cased unless it
    is a metavariable such as LO,HI or I3D."""
    from hpdm_cli.cli.fvd_cmd import _for_checkpoint
    assert _for_checkpoint("A model of level 0") == "Checkpoint --fake: a model of level 0"
    assert _for_checkpoint("LO,HI: guide only") == "Checkpoint --fake: LO,HI: guide only"
    assert _for_checkpoint("I3D weights") == "Checkpoint --fake: I3D weights"


def test_bare_hpdm_prints_the_help_and_one_error_line(no_click_env, tmp_path):
    r = _run([], no_click_env, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Usage: hpdm" in r.stdout and "train" in r.stdout and "eval-fvd" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpdm: error: no command given"), r.stderr


def test_console_script_and_python_m_behave_the_same(no_click_env, tmp_path):
    script = Path(sys.executable).parent / "hpdm"
    assert script.is_file(), "the hpdm console script is not installed next to this Python"
    for args in (["train", "tiny", "--train.steps=10"], ["--help"]):
        a, b = _run(args, no_click_env, tmp_path), _run(args, no_click_env, tmp_path, exe=script)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
    assert a.returncode == 0 and "Usage: hpdm " in a.stdout and a.stderr == ""


def _third_party_imports():
    """(module, file, lazy) for every absolute import of a non-stdlib module in hpdm_cli/."""
    found = []
    for path in sorted((REPO / "hpdm_cli").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top != "hpdm_cli":
                    found.append((top, path.relative_to(REPO), id(node) not in top_level))
    return found


def test_every_third_party_import_is_declared():
    """Module-level imports need a [project] dependency; imports inside functions may use an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group()).lower() for r in reqs}

    core = names(project["dependencies"])
    extras = set().union(*map(names, project.get("optional-dependencies", {}).values()))
    dists = packages_distributions()
    bad = []
    for mod, path, lazy in _third_party_imports():
        provided = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(mod, [])}
        allowed = core | extras if lazy else core
        if not provided & allowed:
            bad.append(f"{path}: {mod} ({'inside a function' if lazy else 'module level'})")
    assert not bad, "imports not declared in pyproject.toml: " + "; ".join(sorted(set(bad)))


# ============================================================================ hpdm bench: bad inputs

def _main(argv, capsys, monkeypatch):
    """Run the real entry point in-process on `hpdm ARGV...`; returns (exit code, stdout, stderr)."""
    from hpdm_cli.cli.app import main
    monkeypatch.setattr(sys, "argv", ["hpdm", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


BENCH_CASES = {
    "--steps 0": (["--steps", "0"], "--steps 0: expected an integer >= 1"),
    "--steps -1": (["--steps", "-1"], "--steps -1"),
    "--warmup -1": (["--warmup", "-1"], "--warmup -1"),
    "--batch 0": (["--batch", "0"], "--batch 0"),
    "--batch -2 --sampling": (["--batch", "-2", "--sampling"], "--batch -2"),
    "--precision fp16": (["--precision", "fp16"], "'fp16'"),
    "--precision ,": (["--precision", ","], "--precision"),
    "--precision two for sampling": (["--sampling", "--precision", "fp32,bf16"], "one precision"),
    "--overlap xyz": (["--sampling", "--overlap", "xyz"], "'xyz'"),
    "--overlap empty item": (["--sampling", "--overlap", "fhw,,hw"], "--overlap"),
    "--sample-steps 8,a": (["--sampling", "--sample-steps", "8,a"], "--sample-steps '8,a'"),
    "--sample-steps 0,1,1": (["--sampling", "--sample-steps", "0,1,1"], "at least one step"),
    "--sample-steps too few": (["--sampling", "--sample-steps", "2,2"], "expected 3 per-level"),
    "--overlap without --sampling": (["--overlap", "hw"], "--sampling"),
    "--cache-only without --sampling": (["--cache-only"], "--sampling"),
    "--compile without --sampling": (["--compile"], "train.compile"),
    "--tile-batch without --sampling": (["--tile-batch", "64"], "--sampling"),
    "--tile-batch 0": (["--sampling", "--tile-batch", "64,0"], "--tile-batch 0"),
    "--tile-batch a": (["--sampling", "--tile-batch", "a"], "--tile-batch 'a'"),
    "--steps with --sampling": (["--sampling", "--steps", "3"], "--steps"),
    "--ablations with --sampling": (["--sampling", "--ablations"], "--ablations"),
    "--json below a file": (["--json", "/dev/null/b.json"], "'/dev/null' is a file, not a folder"),
    "--json in a folder named past 255 bytes": (["--json", "{tmp}/" + "x" * 300 + "/b.json"],
                                                "the folder name xxxxxxxxxxxxxxxxxxxx... is longer than 255 bytes"),
    "--json a folder": (["--json", "{tmp}"], "is a directory"),
    "--json a video": (["--json", "{tmp}/keep.mp4"], "keep.mp4: expected a .json file name"),
    "--json another tool's JSON": (["--json", "{tmp}/mine.json"], "mine.json already holds a file that is not an "
                                                                  "`hpdm bench` report"),
    "cuda on a CPU machine": (["train.device=cuda"], "train.device"),
    "batch not divisible by grad_accum": (["train.grad_accum=3"], "train.batch_size = 16 is not divisible by "
                                                                  "train.grad_accum = 3"),
}


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_bench_bad_inputs_are_one_line_errors(case, capsys, tmp_path, monkeypatch):
    args, needle = BENCH_CASES[case]
    if case == "cuda on a CPU machine":
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mine = tmp_path / "mine.json"
    if case == "--json another tool's JSON":
        mine.write_text('{"mine": 1}')
    code, out, err = _main(["bench", "tiny", *[a.format(tmp=tmp_path) for a in args]], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hpdm: error: "), (case, err)
    assert needle in lines[0] and out == "", (case, lines[0])
    assert [p.name for p in tmp_path.iterdir()] == (["mine.json"] if mine.exists() else []), case   # nothing written
    assert not mine.exists() or mine.read_text() == '{"mine": 1}', case


def test_bench_bad_input_in_a_real_process_without_click(no_click_env, tmp_path):
    r = _run(["bench", "tiny", "--overlap", "hw"], no_click_env, tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("hpdm: error: --overlap only applies with --sampling"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_bench_engine_refuses_bad_counts():
    from hpdm_cli.config import ConfigError
    from hpdm_cli.drivers.bench import bench_sampling, bench_training
    from hpdm_cli.recipe import default_recipe_path, load_recipe
    rec = load_recipe(default_recipe_path("tiny"), [])
    for kw in (dict(steps=0), dict(warmup=-1), dict(batch=0), dict(precisions=[]), dict(precisions=["fp64"])):
        with pytest.raises(ConfigError):
            bench_training(rec, **kw)
    for kw in (dict(batch=0), dict(overlaps=[]), dict(overlaps=["q"]), dict(steps=[1, 1]), dict(steps=[1, 0, 1]),
               dict(precision="fp16"), dict(tile_batches=[4, 0])):
        with pytest.raises(ConfigError):
            bench_sampling(rec, **kw)


def test_bench_sampling_times_each_tile_batch(tmp_path):
    """--tile-batch 1,5: one row per tile batch, in order, each naming its own (the JSON too, in a folder it made),
    each said in a line as soon as it is timed."""
    from hpdm_cli.drivers.bench import run_bench
    said = []
    rows = run_bench("tiny", ["train.device=cpu"], sampling=True, batch=1, compare_cache=False, sample_steps="1,1,1",
                     precision="fp32", tile_batch="1,5", json_out=tmp_path / "new" / "b.json", log=said.append)
    assert [r["tile_batch"] for r in rows] == [1, 5] and all(r["s_per_video"] > 0 for r in rows)
    from conftest import strict_json
    written = strict_json((tmp_path / "new" / "b.json").read_text())      # its missing folder was made
    assert [r["tile_batch"] for r in written] == [1, 5] and [r["peak_mem_GiB"] for r in written] == [None, None]
    from hpdm_cli.drivers.bench import is_bench_report
    from hpdm_cli.io import holds_other_than
    assert not holds_other_than(tmp_path / "new" / "b.json", is_bench_report)      # a re-run may replace it
    assert [line.split(":")[0] for line in said] == [f"overlap {rows[0]['overlap']}, cache on, tile batch {tb}"
                                                     for tb in (1, 5)]
    assert all(f"{r['s_per_video']:.3f} s/video at 1/1/1 steps" in line for r, line in zip(rows, said))



def test_bench_sampling_takes_one_step_count_as_sample_does():
    """--sample-steps 4: level 0's count, halved per level (at least 1), as `hpdm sample --steps 4`."""
    from hpdm_cli.drivers.bench import run_bench
    rows = run_bench("tiny", ["train.device=cpu"], sampling=True, batch=1, compare_cache=False, sample_steps="4",
                     precision="fp32")
    assert [r["steps"] for r in rows] == ["4/2/1"]


def test_bench_training_says_each_row_as_it_is_timed():
    from hpdm_cli.drivers.bench import run_bench
    said = []
    rows = run_bench("tiny", ["train.device=cpu"], steps=1, warmup=0, batch=2, precision="fp32,tf32", log=said.append)
    assert [line.split(":")[0] for line in said] == ["default, fp32, batch 2", "default, tf32, batch 2"]
    assert all(f"{r['videos_per_s']:.1f} videos/s" in line and "GiB" not in line for r, line in zip(rows, said))


def test_bench_sampling_extrapolates_by_denoiser_evaluations():
    """Full-step estimates scale generation time by the tiles of the denoiser's evaluations, not by steps (with
    shifted tiles evaluations differ in tiles); caches do not scale."""
    from types import SimpleNamespace
    import torch
    from hpdm_cli.drivers.bench import _sampling_row
    res = SimpleNamespace(seconds=[1.0, 2.0, 3.0], cache_seconds=[0.0, 0.5, 0.0], cache_bytes=None,
                          context_bytes=[0, 0, 0])
    evals = [(15, 3), (7, 3), (3, 3)]                      # Heun's 2s-1 at full steps [8, 4, 2] and at 2 steps
    row = _sampling_row(res, "hw", True, 2, [2, 2, 2], [8, 4, 2], torch.device("cpu"), [[1], [9], [49]], evals)
    # level 0: 1 s for 3 evaluations -> 15; level 1: 1.5 s -> 7 of 3, plus its 0.5 s cache; level 2 as run
    assert row["s_per_video_full_steps_est"] == pytest.approx((1 * 15 / 3 + 1.5 * 7 / 3 + 0.5 + 3) / 2)
    assert row["s_per_video"] == pytest.approx(3.0)
    # Shifted tiles: evaluations cycle through subsets of 16, 25, 20, 20 tiles. Level 1 ran 3 evaluations
    # (61 tiles) and would run 7 at full steps (16+25+20+20+16+25+20 = 142 tiles), not 7/3 of the time.
    row = _sampling_row(res, "shift-hw", True, 2, [2, 2, 2], [8, 4, 2], torch.device("cpu"),
                        [[1], [16, 25, 20, 20], [16, 25, 20, 20]], evals)
    assert row["s_per_video_full_steps_est"] == pytest.approx((1 * 15 / 3 + 1.5 * 142 / 61 + 0.5 + 3) / 2)


# ============================================================================ hpdm train: a finished run

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from hpdm_cli.data.shapes import write_shapes_dataset
    path = tmp_path_factory.mktemp("data") / "shapes"
    write_shapes_dataset(path, num_videos=8, frames=8, height=32, width=32, overwrite=True)
    return path


def test_a_file_system_without_locks_is_said_once_by_train_and_prepare(tiny_data, tmp_path, capsys, monkeypatch,
                                                                       one_thread):
    """Where flock is not supported the commands run unlocked and say so in one warning line on stderr (train
    said "warning: warning:", prepare said nothing)."""
    import errno
    import hpdm_cli.io.lock as lock

    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(lock.fcntl, "flock", unsupported)
    run = tmp_path / "run"
    code, out, err = _main(["train", "tiny", f"data.path={json.dumps(str(tiny_data))}", "train.steps=1",
                            "train.batch_size=4", "train.warmup_steps=0", "--run-dir", run, "--no-progress"],
                           capsys, monkeypatch)
    said = f"hpdm: warning: {run}: the file system does not support locks; make sure no other hpdm process"
    assert code == 0 and err.count(said) == 1 and "warning: warning" not in err, err
    import numpy as np
    from hpdm_cli.io.video import write_video
    src = tmp_path / "videos"
    src.mkdir()
    for i in range(2):
        write_video(src / f"v{i}.mp4", np.full((8, 32, 32, 3), 40 * i, np.uint8), 8.0)
    for args in (["--synthetic", "shapes", tmp_path / "syn", "--num-videos", "2", "--frames", "2", "--size", "16x16"],
                 [src, tmp_path / "folder", "--size", "32x32"]):
        code, out, err = _main(["prepare", *args, "--text-encoder", "none"], capsys, monkeypatch)
        where = args[2] if args[0] == "--synthetic" else args[1]
        assert code == 0 and err.count(f"hpdm: warning: {where}: the file system does not support locks") == 1, err


def test_rerunning_a_finished_run_says_nothing_to_do_and_tensorboard_absence_once(
        tiny_data, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)         # as without the tensorboard package
    run = tmp_path / "run"
    argv = ["train", "tiny", f"data.path={json.dumps(str(tiny_data))}", "train.steps=1", "train.batch_size=4",
            "train.log_every=1", "train.ckpt_every=1", "train.warmup_steps=0", "--run-dir", run, "--no-progress"]
    code, out, err = _main(argv, capsys, monkeypatch)
    assert code == 0, err
    assert out.count("TensorBoard logging is off") == 1 and "pip install tensorboard" in out
    assert "done: step 1/1, last loss" in out and "nan" not in out
    code, out, err = _main(argv, capsys, monkeypatch)
    assert code == 0 and err == ""
    assert "done: already at step 1/1; nothing to do" in out
    assert "nan" not in out and "TensorBoard" not in out


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["sample", "--guidance", "-1"], 2)])
def test_a_torchrun_rank_leaves_with_its_exit_code_and_skips_the_teardown(args, code, capsys, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) the CLI ends with os._exit(code) after flushing its output, not at interpreter exit."""
    import hpdm_cli.cli.app as app_module

    class Left(Exception):
        pass

    def fake_exit(c):
        raise Left(c)
    monkeypatch.setattr(app_module.os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["hpdm", *args])
    with pytest.raises(Left) as left:
        app_module.main()
    assert left.value.args == (code,)
    monkeypatch.setenv("WORLD_SIZE", "1")                              # a single process exits normally
    with pytest.raises(SystemExit) as normal:
        app_module.main()
    assert normal.value.code == code
    capsys.readouterr()


def test_sample_and_upscale_help_name_every_output_suffix_they_write():
    """--out's help lists exactly what `check_writable` accepts (one list, hpdm_cli.io.video.VIDEO_SUFFIXES)."""
    import inspect
    import re
    from hpdm_cli.cli.sample_cmd import sample
    from hpdm_cli.cli.upscale_cmd import upscale
    from hpdm_cli.io.video import VIDEO_SUFFIXES
    for command in (sample, upscale):
        text = inspect.signature(command).parameters["out"].default.help
        assert set(re.findall(r"\.[a-z][a-z0-9]*", text.split(")")[0])) == set(VIDEO_SUFFIXES), text   # not H.264


def test_progress_bars_are_on_at_a_terminal_only_in_every_command_that_draws_them(monkeypatch):
    """One rule and one help text: --progress/--no-progress as given, else bars only when stderr is a terminal (a
    batch job's redirected log gets no bar frames)."""
    import inspect
    from hpdm_cli.cli import progress
    from hpdm_cli.cli.fvd_cmd import eval_fvd
    from hpdm_cli.cli.prepare_cmd import prepare
    from hpdm_cli.cli.sample_cmd import sample
    from hpdm_cli.cli.upscale_cmd import upscale
    for command in (sample, upscale, eval_fvd, prepare):
        assert inspect.signature(command).parameters["progress"].default.help == progress.PROGRESS_HELP, command
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        assert [progress.bars_wanted(p) for p in (None, True, False)] == [tty, True, False]


def test_an_engine_log_goes_to_its_console_and_its_warnings_to_stderr(capsys):
    """`hpdm train` (stdout) and `hpdm eval-fvd` (stderr) print their engine's log lines as they are and the ones
    that warn as `hpdm: warning: ...` on stderr."""
    from hpdm_cli.cli.console import err, log_line
    log_line("step 10/20 loss 0.5")
    log_line("warning: skipping runs/x/checkpoints/ckpt-00000010: unreadable")
    log_line("real side: 4 clips [dim]x[/dim]", err)
    got = capsys.readouterr()
    assert got.out == "step 10/20 loss 0.5\n"
    assert got.err == ("hpdm: warning: skipping runs/x/checkpoints/ckpt-00000010: unreadable\n"
                       "real side: 4 clips [dim]x[/dim]\n")


def test_only_a_dotted_unknown_option_gets_the_recipe_override_hint(capsys, monkeypatch):
    code, _, err = _main(["train", "tiny", "--bogus"], capsys, monkeypatch)
    assert code == 2 and "--bogus" in err and "recipe overrides" not in err, err
    code, _, err = _main(["train", "tiny", "--train.steps=3"], capsys, monkeypatch)
    assert code == 2 and "recipe overrides take no dashes: train.steps=VALUE" in err, err


def test_progress_bars_draw_one_bar_per_key_to_its_end(capsys):
    from hpdm_cli.cli.progress import keyed_bars
    with keyed_bars(lambda level: f"level {level}") as bar:
        for done in (1, 2):
            bar(0, done, 2)
        bar(1, 1, 1)
    err = capsys.readouterr().err
    assert err.count("level 0") == 1 and err.count("level 1") == 1, err
    assert "2/2" in err and "1/1" in err, err


def test_without_bars_a_batch_log_gets_one_line_per_finished_key(capsys):
    """Bars off (stderr a file): a line as each level finishes, none before, none twice; other ranks say nothing."""
    from hpdm_cli.cli.progress import keyed_bars
    with keyed_bars(lambda level: f"level {level}", False, lines=True) as bar:
        bar(0, 1, 3)
        bar(0, 2, 3)
        assert capsys.readouterr().err == ""
        bar(0, 3, 3)
        bar(0, 3, 3)
        bar(1, 2, 2)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" done at ")[0] for line in lines] == ["level 0: 3/3", "level 1: 2/2"], lines
    assert all(line.endswith(" s") for line in lines), lines
    with keyed_bars(lambda level: f"level {level}", False) as bar:          # a rank other than 0: nothing at all
        assert bar is None


def test_rank0_warn_is_silent_on_other_ranks(capsys, monkeypatch):
    from types import SimpleNamespace
    from hpdm_cli.cli import console
    for rank, said in ((1, ""), (0, "hpdm: warning: a note\n")):
        monkeypatch.setattr(console, "world", lambda: SimpleNamespace(rank=rank))
        console.rank0_warn("a note")
        assert capsys.readouterr().err == said


@pytest.mark.parametrize("flag,live", [("--progress", True), ("--no-progress", False)])
def test_train_progress_flag_reaches_the_loop(flag, live, capsys, monkeypatch, tmp_path):
    import types
    from hpdm_cli.train import loop
    seen = []

    def fake_train(recipe, run_dir, log=None, progress=False):
        seen.append(progress)
        return types.SimpleNamespace(interrupted=None, step=3, start_step=3, steps=3, checkpoint=None)
    monkeypatch.setattr(loop, "train", fake_train)
    code, _, err = _main(["train", "tiny", "--run-dir", tmp_path / "run", flag], capsys, monkeypatch)
    assert code == 0 and seen == [live], err


def _printed(monkeypatch, module, fn, *args) -> str:
    """What `module.fn(*args)` prints on hpdm's stdout console."""
    import io
    from rich.console import Console
    buf = io.StringIO()
    monkeypatch.setattr(module, "out", Console(file=buf, width=400, color_system=None))
    fn(*args)
    return buf.getvalue()


def test_prepare_summary_says_whether_the_dataset_was_published_and_how_many_skips_it_leaves_out(monkeypatch):
    from types import SimpleNamespace
    from hpdm_cli.cli import prepare_cmd
    res = SimpleNamespace(warnings=[], already_complete=False, num_videos=3, num_images=0, num_frames=48,
                          video_seconds=6.0, fps=8.0, published=True, size=(64, 64), out_dir="data", seconds=1.0,
                          resumed=0, num_bytes=2 ** 20, bytes_per_video_second=2 ** 17, raw_bytes_per_video_second=2 ** 20,
                          notes={}, report_path="data/report.json",
                          skipped=[{"source": f"v{i}.mp4", "reason": "bad"} for i in range(prepare_cmd._MAX_LISTED)])
    text = _printed(monkeypatch, prepare_cmd, prepare_cmd._print_result, res)
    assert text.startswith("wrote 3 videos") and "more" not in text and text.count(": bad") == prepare_cmd._MAX_LISTED
    res.published, res.skipped = False, res.skipped + [{"source": "last.mp4", "reason": "bad"}]
    text = _printed(monkeypatch, prepare_cmd, prepare_cmd._print_result, res)
    assert text.startswith("prepared (not published) 3 videos") and "... and 1 more" in text and "last.mp4" not in text


def test_fvd_table_says_where_each_sides_statistics_came_from():
    from types import SimpleNamespace
    from hpdm_cli.cli.fvd_cmd import _how
    side = SimpleNamespace(kind="videos", cache="hit", cache_path="c.npz", seconds=2.0, clips_per_second=4.0)
    assert _how(side) == "cache hit (c.npz)"
    side.cache = "miss (written)"
    assert _how(side) == "computed in 2.0 s (4.00 clips/s), cached to c.npz"
    side.cache = "off"
    assert _how(side) == "computed in 2.0 s (4.00 clips/s)"
    assert _how(SimpleNamespace(kind="stats")) == "read from the file"


def test_piped_output_is_wide_enough_for_the_tables():
    """Printed to a file or pipe, tables keep their labels and numbers (Rich's default there is 80 columns, which
    cut `hpdm bench --ablations` labels to "overl…"); a terminal, or COLUMNS, decides the width otherwise."""
    import io
    from rich.console import Console
    from rich.table import Table
    from hpdm_cli.cli.console import PIPED_WIDTH, console_width

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert console_width(io.StringIO(), {}) == PIPED_WIDTH
    assert console_width(Terminal(), {}) is None and console_width(io.StringIO(), {"COLUMNS": "100"}) is None
    table = Table()
    for k in range(6):
        table.add_column(f"overlap_and_cache_setting_{k}")
    table.add_row(*[f"{0.0591234 * k:.6f}" for k in range(6)])
    sink = io.StringIO()
    Console(file=sink, width=console_width(sink, {})).print(table)
    text = sink.getvalue()
    assert "…" not in text and "overlap_and_cache_setting_5" in text and "0.295617" in text


@pytest.mark.parametrize("command,module,function,args", [
    ("sample", "sample", "generate", []),
    ("upscale", "upscale", "upscale", ["in.mp4", "--ckpt", "packaged", "--out", "up.mp4"]),
    ("eval", "evaluate", "evaluate", ["--ckpt", "packaged"]),
    ("eval-fvd", "fvd", "run_eval_fvd", ["--real", "r", "--fake", "packaged"]),
])
def test_every_generating_command_hands_its_sampler_options_to_its_driver(command, module, function, args, capsys,
                                                                          monkeypatch):
    """--steps, --guidance, --guidance-interval, --guide-model and --sigma-max reach the driver as given."""
    import importlib

    from conftest import run_cli
    from hpdm_cli.conditioning import GenerateError
    seen = {}

    def driver(*a, **kw):
        seen.update(kw)
        raise GenerateError("stopped by the test")
    monkeypatch.setattr(importlib.import_module(f"hpdm_cli.drivers.{module}"), function, driver)
    given = dict(steps="8,4,2", guidance="1.5,1,1", guidance_interval="0,1", guide_model="none", sigma_max="80,10,10")
    flags = [x for k, v in given.items() for x in (f"--{k.replace('_', '-')}", v)]
    code, _, err = run_cli(capsys, command, *args, *flags)
    assert code == 2 and "stopped by the test" in err, err
    assert {k: seen.get(k) for k in given} == given
