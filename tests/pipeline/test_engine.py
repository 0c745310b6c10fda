"""The training engine: exact resume, checkpoint hygiene, schedule/clipping, curves, and the 2-process reduction."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.dist import DistContext, reduce_sum
from pipeline.engine import Checkpointer, Hook, Trainer, write_curve

DATA = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
TARGET = DATA @ torch.arange(5.0) + 1.0
ONE = DistContext()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))


def _trainer(model, root=None, settings="a", stop_after=None, total=10, ctx=ONE, batch=8, hooks=()):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def run_step(step: int) -> dict[str, float]:
        idx = torch.arange(step * batch, (step + 1) * batch) % len(DATA)  # a pure function of the step
        local = idx[ctx.rank :: ctx.world_size]
        pred = model(DATA[local]).squeeze(1)  # dropout draws from the global RNG: resume must restore it
        loss = ((pred - TARGET[local]) ** 2).sum() / batch
        loss.backward()
        return {"loss": float(loss.detach())}

    return Trainer(
        run_step=run_step, optimizer=opt, parameters=list(model.parameters()), total_steps=total, ctx=ctx,
        device=torch.device("cpu"), named_tensors=model.state_dict, restore=model.load_state_dict,
        checkpointer=Checkpointer(root, settings) if root else None, checkpoint_every=3,
        lr_at=lambda s: 1e-2 * (0.1 if s >= 7 else 1.0), grad_clip=0.5, stop_after=stop_after,
        row_extra=lambda s: {"lr": 1e-2 * (0.1 if s >= 7 else 1.0)}, hooks=hooks,
    )


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    ref_model = _model()
    ref = _trainer(ref_model).train()
    assert [r["step"] for r in ref.history] == list(range(1, 11)) and not ref.interrupted

    model = _model()
    first = _trainer(model, tmp_path / "ckpt", stop_after=4).train()
    # checkpoints every 3 steps: stopping after step 4 keeps step 3's (the newest one only)
    assert first.interrupted and first.step == 4
    assert [d.name for d in (tmp_path / "ckpt").iterdir()] == ["step-0000003"]
    torch.manual_seed(123)  # a fresh process: another RNG state, another init
    again = _model()
    trainer = _trainer(again, tmp_path / "ckpt")
    assert trainer.resume() == 3 and trainer.resumed_from.name == "step-0000003"
    result = trainer.train()
    assert result.start == 3 and result.steps_this_run == 7
    assert result.history == ref.history  # losses and learning rates of every step
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_checkpoints_of_other_settings_are_removed_not_resumed(tmp_path):
    root = tmp_path / "ckpt"
    _trainer(_model(), root, settings="old", total=3).train()
    assert (root / "step-0000003").is_dir()
    (root / ".step-0000006.tmp-999999").mkdir()  # a killed writer's leftover
    trainer = _trainer(_model(), root, settings="new")
    assert trainer.resume() == 0 and trainer.resumed_from is None
    assert list(root.iterdir()) == []


def test_checkpoint_beyond_the_requested_steps_is_not_used(tmp_path):
    root = tmp_path / "ckpt"
    trainer = _trainer(_model(), total=6)
    trainer.checkpointer = Checkpointer(root, "a", keep_last=2)
    trainer.train()
    assert sorted(d.name for d in root.iterdir()) == ["step-0000003", "step-0000006"]
    assert _trainer(_model(), root, total=4).resume() == 3  # step 6 lies past a 4-step run


def test_keep_last_and_state_file(tmp_path):
    model = _model()
    trainer = _trainer(model, total=10)
    trainer.checkpointer = Checkpointer(tmp_path, "a", keep_last=2)
    trainer.train()
    assert [d.name for d in sorted(tmp_path.iterdir())] == ["step-0000009", "step-0000010"]
    state = json.loads((tmp_path / "step-0000010" / "state.json").read_text())
    assert state["step"] == 10 and state["settings"] == "a" and len(state["history"]) == 10
    assert state["names"] == list(model.state_dict())


def test_schedule_and_clipping_are_applied():
    model = _model()
    seen = []

    class Spy(Hook):
        def after_step(self, trainer):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    trainer = _trainer(model, hooks=[Spy()])
    clipped = []
    real = trainer.optimizer.step

    def step(*a, **k):
        clipped.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        return real(*a, **k)

    trainer.optimizer.step = step
    trainer.train()
    assert seen == [1e-2] * 7 + [1e-3] * 3
    assert max(clipped) <= 0.5 + 1e-5


def test_write_curve(tmp_path):
    path = tmp_path / "curve.csv"
    write_curve(path, [{"step": 1, "loss": 0.5, "other": 3}, {"step": 2, "loss": 0.25}], ("step", "loss"))
    assert path.read_text() == "step,loss\n1,0.5\n2,0.25\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.csv"]


def test_reduce_sum_single_process_is_identity():
    assert reduce_sum({"a": 1.5}, DistContext(), torch.device("cpu")) == {"a": 1.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank=rank, world_size=world)
        sums = reduce_sum({"rank": float(rank), "one": 1.0}, ctx, torch.device("cpu"))
        model = _model()
        model.eval()  # no dropout: the two ranks' parts must add up to the one-process step exactly in math
        result = _trainer(model, ctx=ctx, total=4).train()
        if rank == 0:
            torch.save({"sums": sums, "history": result.history, "state": model.state_dict()}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_reduce_gradients_and_losses(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    assert got["sums"] == {"rank": 1.0, "one": 2.0}
    model = _model()
    model.eval()
    ref = _trainer(model, total=4).train()
    for a, b in zip(got["history"], ref.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6)
