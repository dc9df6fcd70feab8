"""One learning-rate schedule module (featcache.schedules) serves every training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcache import schedules
from featcache.heads.base import MemberSpec
from featcache.heads.training import member_rates
from featcache.pipelines import bench_medmnist, finetune


def _torch_rates(make, steps: int, lr: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("epochs", [1, 3, 10])
def test_cosine_equals_cosine_annealing_lr_per_epoch(epochs: int) -> None:
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs), epochs, 0.1)
    ours = [schedules.epoch_lr("cosine", 0.1, e, epochs) for e in range(epochs)]
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_constant_and_unknown() -> None:
    assert [schedules.epoch_lr("constant", 0.3, e, 5) for e in range(5)] == [0.3] * 5
    assert schedules.epoch_lr("cosine", 0.3, 0, 0) == 0.3
    with pytest.raises(ValueError, match="linear"):
        schedules.epoch_lr("linear", 0.3, 0, 5)


def test_step_decay_equals_step_lr_per_iteration() -> None:
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5), 13, 1e-3)
    ours = [schedules.step_decay_lr(1e-3, t, 0.5, 4) for t in range(13)]
    assert ours == pytest.approx(ref, rel=1e-12)
    lrs = torch.tensor([1e-3, 1e-2])
    assert torch.equal(schedules.step_decay_lr(lrs, 9, 0.9, 4), lrs * 0.9**2)
    assert schedules.multiplier_at(9, 0.9, 4) == 0.9**2


def test_every_loop_reads_the_one_schedule() -> None:
    """The head trainer, finetune and the MedMNIST probe give exactly the module's rates."""
    spec = MemberSpec(lr=0.1, epochs=7, schedule="cosine")
    ours = member_rates(spec, 1).tolist()  # one step an epoch: the rate of each epoch
    assert ours == pytest.approx([schedules.epoch_lr("cosine", 0.1, e, 7) for e in range(7)], rel=1e-6)
    cfg = finetune.FinetuneConfig(dataset="x", lr=0.01, epochs=5)
    assert [finetune.lr_at_epoch(cfg, e) for e in range(5)] == [schedules.epoch_lr(cfg.schedule, 0.01, e, 5) for e in range(5)]
    probe = bench_medmnist.ProbeRecipe(iterations=402, lr_decay=0.9, decay_every=200).member(1000, 1e-3, 0)
    rates = member_rates(probe, 1000 // probe.batch_size)
    assert [rates[t] for t in (0, 199, 200, 401)] == [np.float32(schedules.step_decay_lr(1e-3, t, 0.9, 200)) for t in (0, 199, 200, 401)]
    assert finetune.SCHEDULES == schedules.EPOCH_SCHEDULES


def test_step_schedule_of_a_head_equals_steplr_per_iteration() -> None:
    """``--schedule step`` (any head): StepLR(step_size=N, gamma) stepped once per optimiser step."""
    spec = MemberSpec(lr=0.1, schedule="step", lr_decay=0.5, decay_every=3, epochs=4, batch_size=10)
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 4 * 5, 0.1)
    assert member_rates(spec, 5).tolist() == pytest.approx(ref, rel=1e-6)


def test_a_run_cut_by_steps_keeps_its_epochs_rates() -> None:
    """``steps`` ends a run inside its last epoch: cosine over the ⌈steps / per_epoch⌉ epochs begun."""
    spec = MemberSpec(lr=0.1, schedule="cosine", steps=7)
    rates = member_rates(spec, 3)  # epochs 0, 1 whole and 1 step of epoch 2, of 3 begun
    expect = [schedules.epoch_lr("cosine", 0.1, t // 3, 3) for t in range(7)]
    assert rates.tolist() == pytest.approx(expect, rel=1e-6) and len(rates) == 7
