import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from .conftest import run_stage_in, tiny_params_dict, write_params

LR = 1e-3  # 10x the tiny default, so that 6 steps move the weights enough for a broken reduction to show


def _fresh(src: Path, dest: Path) -> Path:
    """A copy of the trained tiny workspace without train outputs/checkpoints (the feature cache is kept:
    its identity does not depend on the learning rate, so both runs read the same features)."""
    shutil.copytree(src, dest)
    for rel in ("artifacts/train", "artifacts/train_checkpoints"):
        shutil.rmtree(dest / rel, ignore_errors=True)
    (dest / "artifacts/train_curve.csv").unlink(missing_ok=True)
    return dest


def _curve(ws: Path) -> dict[str, np.ndarray]:
    rows = list(csv.DictReader((ws / "artifacts/train_curve.csv").read_text().splitlines()))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.slow
def test_two_processes_match_one(tiny_trained, tmp_path):
    """``spade train --nproc 2`` (torchrun, gloo) against the 1-process run, same global batches.

    The mask BCE/dice terms are normalised by the global batch's mask count on every rank (``num_masks``), and
    the relation-query loss is a per-image mean, so those parts sum to the 1-process value exactly (checked at
    step 1, before any update). What we cannot remove without changing ``spade_core``: ``loss_ce`` (class CE of
    the queries) and ``loss_rel`` (predicate CE of the relation pairs) are *weighted* means (F.cross_entropy
    with class weights, no-object/no-relation weight 0.1), normalised by the weight sum of the micro-batch's
    targets; two ranks with half batches each normalise by their own half's sum. Measured on this config
    (lr 1e-3, 6 steps): loss <= 0.17 %, loss_mask <= 0.10 %, loss_rqc <= 0.03 %, loss_rel <= 1.6 % relative
    (<= 4.3 % since the embedded CLIP's 16x16 dense map; loss_rel is a small share of the loss). Since the
    default runs on UNet features only (no RGB level, issue 15) loss_rqc jumps to 2.8-3.5 % off from step 4 on
    while steps 1-3 agree to 0.05 % (the same values in CI and locally): `L_rqc` compares the similarity matrix
    with an indicator placed by the Hungarian matching, which a weight difference of a few lr can flip, so the
    term moves discretely; the step-1 values (same weights) still agree to 1e-5. Since the duplicate suppression
    and `L_rqc` over every detected pair (`train.rqc_pairs: detected`), the detected set (an objectness threshold,
    an IoU threshold) flips too, and with it the relation pairs: at step 4, loss_rqc 6.1 % and loss_rel 10.4 % off
    (steps 1-3: <= 2.5 %), the total loss still <= 0.5 %; hence 10 % and 15 % on those two terms.
    With the gradient all-reduce removed the loss was off by up to 2.5 % (measured before the embedded CLIP), so
    the tolerance on the total loss separates the two; the one on loss_rel only bounds the per-rank
    normalisation. Weights differ by at most a few Adam steps of size lr (sign flips of near-zero gradients).
    """
    raw = tiny_params_dict(train={"lr": LR})
    one = _fresh(tiny_trained, tmp_path / "one")
    run_stage_in(one, "train", raw)

    two = _fresh(tiny_trained, tmp_path / "two")
    write_params(two, raw)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "LOGLEVEL": "INFO",  # torchrun prints the rendezvous result (world sizes)
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [sys.executable, "-m", "stages.cli", "train", "--nproc", "2"]
    proc = subprocess.run(cmd, cwd=two, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global_world_sizes=[2, 2]" in proc.stderr

    a, b = _curve(one), _curve(two)
    assert len(a["step"]) == len(b["step"]) == 6
    np.testing.assert_array_equal(a["lr"], b["lr"])
    np.testing.assert_allclose(b["loss_rqc"][0], a["loss_rqc"][0], rtol=1e-5)  # same weights at step 1
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=5e-3)
    np.testing.assert_allclose(b["loss_mask"], a["loss_mask"], rtol=5e-3)
    np.testing.assert_allclose(b["loss_rqc"], a["loss_rqc"], rtol=1e-1)
    np.testing.assert_allclose(b["loss_rel"], a["loss_rel"], rtol=1.5e-1)

    got = load_file(str(two / "artifacts/train/model.safetensors"))
    want = load_file(str(one / "artifacts/train/model.safetensors"))
    assert got.keys() == want.keys()
    bound = 2 * LR * len(a["step"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=bound, msg=k)
