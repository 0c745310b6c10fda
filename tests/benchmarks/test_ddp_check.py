"""benchmarks/ddp_check.py: the engine's reductions over a real process group, one and two processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ddp_check.py"


@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_check_passes_under_torchrun(nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                          str(SCRIPT), "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # the ranks share one stdout, so their lines may interleave: count the reports instead of splitting lines
    assert out.stdout.count("allreduce_grads ok, reduce_sum ok") == nproc and "WRONG" not in out.stdout
    assert all(f"rank {r}/{nproc} backend gloo" in out.stdout for r in range(nproc))


def test_ddp_check_refuses_to_run_outside_torchrun():
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode != 0 and "run under torchrun" in out.stderr
