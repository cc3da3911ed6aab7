"""The README's demo command runs end to end and leaves videos one can open."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_readme_starts_with_the_demo_and_test_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_demo_script_produces_videos(tmp_path):
    env = dict(os.environ, HPDM_DEMO_DIR=str(tmp_path))
    res = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                         timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    clips = sorted((tmp_path / "demo").glob("*.mp4"))
    assert len(clips) == 4 and len(list((tmp_path / "demo").glob("*.gif"))) == 4
    from hpdm_cli.io.video import read_video
    frames, fps = read_video(clips[0])
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8 and fps == 8
    assert (tmp_path / "runs" / "tiny" / "stats.jsonl").exists()
