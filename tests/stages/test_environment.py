"""A stage started by a Python without the project's packages says so in one line (no import traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = Path(sys._base_executable)  # the interpreter the virtualenv was made from, without its packages


@pytest.mark.skipif(not BASE.is_file() or sys.prefix == sys.base_prefix,
                    reason="needs to run in a virtualenv, with its base interpreter")
def test_stage_outside_the_virtualenv_fails_with_one_line(tmp_path):
    probe = subprocess.run([str(BASE), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the base interpreter has torch installed too")
    proc = subprocess.run([str(BASE), "-m", "stages.prepare"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "source .venv/bin/activate" in proc.stderr
