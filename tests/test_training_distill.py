import math

import pytest
import torch
import torch.nn.functional as F

from kdsearch.distill import KDConfig, distill, kd_loss
from kdsearch.spaces import create_model
from kdsearch.training import Recipe, fit

CFG = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[2.0, 0.0, 0.0]])
    y = torch.tensor([0])
    cfg = KDConfig(temperature=2.0, alpha=0.75)
    ps = torch.softmax(s / 2, 1)[0]
    pt = torch.softmax(t / 2, 1)[0]
    kl = float((pt * (pt.log() - ps.log())).sum())
    ce = -math.log(float(torch.softmax(s, 1)[0, 0]))
    expected = 0.25 * ce + 0.75 * 4 * kl
    assert float(kd_loss(s, t, y, cfg)) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_kl_when_logits_agree():
    s = torch.randn(4, 5)
    loss = kd_loss(s, s.clone(), torch.zeros(4, dtype=torch.long), KDConfig(alpha=1.0))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_distill_learns_far_above_chance(digits_task):
    torch.manual_seed(0)
    teacher = create_model(CFG, num_classes=10, in_chans=1)
    fit(teacher, digits_task, Recipe(epochs=5, optimizer="adamw", lr=5e-3, warmup_epochs=0.5))
    student = create_model(CFG, num_classes=10, in_chans=1)
    result = distill(student, teacher, digits_task, Recipe(epochs=5, lr=0.1, warmup_epochs=0.5))
    assert result.accuracy > 0.6
    assert len(result.history) == 5 and result.history[-1]["img_per_s"] > 0


def test_interrupted_training_resumes_from_checkpoint(digits_task, tmp_path):
    ck = tmp_path / "ck.pt"
    torch.manual_seed(0)
    model = create_model(CFG, num_classes=10, in_chans=1)
    fit(model, digits_task, Recipe(epochs=1, lr=0.05), checkpoint=ck)
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 1
    # a new process resumes: same checkpoint, a longer recipe → only the missing epoch runs
    fresh = create_model(CFG, num_classes=10, in_chans=1)
    result = fit(fresh, digits_task, Recipe(epochs=2, lr=0.05), checkpoint=ck)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert torch.load(ck, weights_only=True)["epoch"] == 2


def test_divergence_is_reported(digits_task):
    from kdsearch.training import TrainingDiverged

    model = create_model(CFG, num_classes=10, in_chans=1)
    with pytest.raises(TrainingDiverged):
        fit(model, digits_task, Recipe(epochs=1), loss_fn=lambda logits, y, x: F.cross_entropy(logits, y) * float("nan"))
