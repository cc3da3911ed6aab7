"""The README's two commands: the demo leaves videos one can open; test.sh and .ci/run fail when tests fail.

The demo's steps run with the environment this suite already runs in (HPDM_SKIP_SETUP=1 and this
Python's bin folder on PATH): installing is scripts/setup.sh's job, which test.sh runs first.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_readme_commands_run_scripts_that_exist_and_ci_runs_the_same_test_command():
    """What the README tells a user to run are scripts of this repository that parse; CI runs its test command."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands, "the README's first bash block is empty"
    for cmd in commands:
        shell, script = cmd.split()
        assert shell == "bash" and (ROOT / script).is_file(), cmd
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    tests = [c for c in commands if c.endswith("test.sh")]
    assert tests and all(c in ci for c in tests)                         # a command there, not a comment
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script.name, r.stderr)


def _sandbox(tmp_path: Path, pytest_exit: int) -> Path:
    """A copy of .ci/run and scripts/test.sh whose .venv Python is a stub exiting with `pytest_exit`."""
    box = tmp_path / f"repo-{pytest_exit}"
    (box / ".ci").mkdir(parents=True)
    (box / "scripts").mkdir()
    shutil.copy(ROOT / ".ci" / "run", box / ".ci" / "run")
    shutil.copy(ROOT / "scripts" / "test.sh", box / "scripts" / "test.sh")
    (box / "scripts" / "setup.sh").write_text("echo setup-ran > setup.marker\n")
    bin_dir = box / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\necho \"$@\" > pytest.args\nexit {pytest_exit}\n")
    (bin_dir / "python").chmod(0o755)
    return box


def test_ci_and_test_sh_pass_on_green_and_fail_on_no_tests(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HPDM_SKIP_SETUP"}
    for code, want_ok in ((0, True), (5, False), (1, False)):
        box = _sandbox(tmp_path, code)
        r = subprocess.run(["bash", str(box / ".ci" / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert (r.returncode == 0) == want_ok, (code, r.returncode, r.stdout, r.stderr)
        assert (box / "setup.marker").exists()                             # set-up runs first
        assert (box / "pytest.args").read_text().split() == ["-m", "pytest", "-q", "tests"]   # in .venv


def test_demo_script_produces_videos(tmp_path):
    out = tmp_path / "not" / "yet" / "there"                              # HPDM_DEMO_DIR is created if missing
    env = dict(os.environ, HPDM_DEMO_DIR=str(out), HPDM_SKIP_SETUP="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               HPDM_DEMO_TRAIN_ARGS="train.steps=4 train.batch_size=4 train.log_every=2 train.ckpt_every=4",
               HPDM_DEMO_SAMPLE_ARGS="--steps 4", HPDM_DEMO_PROMPT_ARGS="--steps 4,2,1")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    from hpdm_cli.io.video import read_video
    prompted = sorted((out / "demo").glob("*.mp4"))
    assert [p.name for p in prompted] == ["red-circle-right.mp4", "yellow-square-down.mp4"]
    assert len(list((out / "demo").glob("*.gif"))) == 2 and len(list((out / "demo").glob("*.png"))) == 2
    frames, fps = read_video(prompted[0])
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    clips = sorted((out / "demo" / "tiny").glob("*.mp4"))
    assert len(clips) == 4 and len(list((out / "demo" / "tiny").glob("*.gif"))) == 4
    frames, fps = read_video(clips[0])
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8 and fps == 8
    assert (out / "runs" / "tiny" / "stats.jsonl").exists()
    assert "[setup]" not in res.stdout                                   # nothing was installed
