import pytest
import torch
import torch.nn.functional as F

from kdsearch.distill import distill
from kdsearch.distill.losses import create_loss, list_losses
from kdsearch.spaces import create_model
from kdsearch.training import Recipe, TrainingDiverged, evaluate, fit, lr_at

CFG = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}


@pytest.fixture(scope="module")
def trained_teacher(digits_task):
    torch.manual_seed(0)
    teacher = create_model(CFG, num_classes=10, in_chans=1)
    fit(teacher, digits_task, Recipe(epochs=5, optimizer="adamw", lr=5e-3, warmup_epochs=0.5))
    return teacher.eval()


VIT = {"family": "vit", "depth": 2, "embed_dim": 64, "num_heads": 2, "head_dim": 32, "mlp_ratio": 2.0, "patch_size": 8,
       "img_size": 32}
VIT_RECIPE = dict(epochs=12, optimizer="adamw", lr=3e-3, warmup_epochs=0.5)  # transformers learn slowly with SGD on 1.4k images


@pytest.fixture(scope="module")
def trained_vit_teacher(digits_task):
    torch.manual_seed(0)
    teacher = create_model(VIT, num_classes=10, in_chans=1)
    fit(teacher, digits_task, Recipe(**VIT_RECIPE))
    return teacher.eval()


def _reads_attention(loss: str) -> bool:
    return getattr(create_loss(loss), "teacher_attention_layer", None) is not None


@pytest.mark.parametrize("loss", [name for name in list_losses() if name != "ce"])  # every registered loss
def test_every_loss_distils_far_above_chance(digits_task, trained_teacher, loss, request):
    torch.manual_seed(0)
    if _reads_attention(loss):  # a relation loss: a ViT pair (heads and widths differ on purpose)
        teacher, recipe = request.getfixturevalue("trained_vit_teacher"), Recipe(**VIT_RECIPE)
        student = create_model({**VIT, "embed_dim": 48, "num_heads": 3, "head_dim": 16}, num_classes=10, in_chans=1)
    else:
        teacher, recipe = trained_teacher, Recipe(epochs=6, lr=0.1, warmup_epochs=0.5)
        student = create_model({**CFG, "width3": 16}, num_classes=10, in_chans=1)
    options = {"warmup": 1} if loss == "dkd" else {}
    result = distill(student, teacher, digits_task, recipe, loss, loss_options=options)
    assert result.accuracy > 0.4, loss  # 10 classes: chance is 0.1
    assert len(result.history) == recipe.epochs and result.history[-1]["img_per_s"] > 0


def test_no_kd_baseline_needs_no_teacher(digits_task):
    torch.manual_seed(0)
    student = create_model(CFG, num_classes=10, in_chans=1)
    result = distill(student, None, digits_task, Recipe(epochs=2, lr=0.1), "ce")
    assert result.accuracy > 0.3


def test_teacher_logits_are_computed_once_per_view(digits_task, trained_teacher, tmp_path):
    """Un-augmented images: one table of teacher logits serves every epoch; augmented: one per epoch (the views
    change), each computed once and then shared (kdsearch.teacher.outputs)."""
    student = create_model(CFG, num_classes=10, in_chans=1)
    result = distill(student, trained_teacher, digits_task, Recipe(epochs=2, augment=False), "kd", outputs_root=tmp_path)
    assert result.teacher_source.startswith("shared outputs")
    assert sorted(p.name for p in tmp_path.rglob("*.npy")) == ["plain.npy"]
    distill(student, trained_teacher, digits_task, Recipe(epochs=2, augment=True), "kd", outputs_root=tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*.npy")) == ["epoch0000.npy", "epoch0001.npy", "plain.npy"]


def test_interrupted_training_resumes_exactly(digits_task, tmp_path, monkeypatch):
    import kdsearch.training.loop as training  # the module whose fit() evaluates after each epoch

    recipe = Recipe(epochs=3, lr=0.05)
    torch.manual_seed(0)
    model = create_model(CFG, num_classes=10, in_chans=1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    full = fit(model, digits_task, recipe)

    # Same run, killed during epoch 2 (after epoch 1's checkpoint was written).
    real_evaluate, calls = training.evaluate_scores, {"n": 0}  # what fit scores each epoch with

    def dying_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    ck = tmp_path / "ck.pt"
    killed = create_model(CFG, num_classes=10, in_chans=1)
    killed.load_state_dict(init)
    monkeypatch.setattr(training, "evaluate_scores", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, digits_task, recipe, checkpoint=ck)
    monkeypatch.setattr(training, "evaluate_scores", real_evaluate)
    assert torch.load(ck, weights_only=True)["epoch"] == 1

    resumed_model = create_model(CFG, num_classes=10, in_chans=1)  # a new process: fresh weights
    resumed = fit(resumed_model, digits_task, recipe, checkpoint=ck)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["val_accuracy"] for h in resumed.history] == pytest.approx([h["val_accuracy"] for h in full.history], abs=1e-9)
    for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_lr_schedules():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) < 0.01
    assert lr_at(40, 100, 0, 1.0, "step") == 1.0 and lr_at(60, 100, 0, 1.0, "step") == pytest.approx(0.1)
    assert lr_at(80, 100, 0, 1.0, "step") == pytest.approx(0.01)


def test_divergence_is_reported(digits_task):
    class Exploding(type(create_loss("ce"))):
        def forward(self, student, teacher, labels, epoch):
            return F.cross_entropy(student.logits, labels) * float("nan")

    model = create_model(CFG, num_classes=10, in_chans=1)
    with pytest.raises(TrainingDiverged):
        fit(model, digits_task, Recipe(epochs=1), loss=Exploding(create_loss("ce").params))


def _grad_norms_at_each_step(digits_task, clip: float) -> list[float]:
    """The total gradient norm the optimiser sees at every step of one AdamW epoch."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        torch.manual_seed(0)
        model = create_model(CFG, num_classes=10, in_chans=1)
        result = fit(model, digits_task, Recipe(epochs=1, optimizer="adamw", lr=3e-3, clip_grad_norm=clip, schedule="step"))
    finally:
        handle.remove()
    assert result.accuracy == pytest.approx(evaluate(model, digits_task))
    return norms


def test_gradient_clipping_bounds_the_norm_the_optimiser_sees(digits_task):
    unclipped = _grad_norms_at_each_step(digits_task, clip=0.0)
    clipped = _grad_norms_at_each_step(digits_task, clip=0.5)
    assert len(clipped) == len(unclipped) > 0
    assert max(unclipped) > 0.5  # without clipping the norm does exceed the limit …
    assert max(clipped) <= 0.5 * (1 + 1e-4)  # … and with it, never
    assert sum(n > 0.49 for n in clipped) >= sum(n > 0.5 for n in unclipped) // 2  # the large ones were scaled to the limit


def test_recipe_and_family_settings_are_user_errors():
    from kdsearch.exceptions import KdsearchError

    with pytest.raises(KdsearchError, match="optimizer 'adam' is not one of sgd, adamw"):
        Recipe(optimizer="adam")  # was accepted here and failed later with a bare ValueError
    with pytest.raises(KdsearchError, match="block must be 'basic' or 'bottleneck'"):
        create_model({"family": "resnet_timm", "block": "bottle", "depth1": 1, "depth2": 1, "depth3": 1, "depth4": 1}, num_classes=10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_channels_last(digits_task, trained_teacher, amp):
    student = create_model(CFG, num_classes=10, in_chans=1)
    result = distill(student, trained_teacher, digits_task, Recipe(epochs=2, lr=0.1, amp=amp), "kd", device="cuda")
    assert result.accuracy > 0.3
    assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_channels_last_is_kept_only_where_onednn_trains_safely():
    from kdsearch.training import CPU_CHANNELS_LAST_MAX_PX, Recipe, memory_format_for

    auto = Recipe()
    assert memory_format_for(auto, "cpu", (3, 32, 32)) == torch.channels_last  # 1.3x faster here, and safe
    assert memory_format_for(auto, "cpu", (1, CPU_CHANNELS_LAST_MAX_PX + 8, CPU_CHANNELS_LAST_MAX_PX + 8)) == torch.contiguous_format
    assert memory_format_for(auto, "cuda", (3, 224, 224)) == torch.channels_last
    assert memory_format_for(Recipe(channels_last="off"), "cpu", (3, 32, 32)) == torch.contiguous_format


def test_training_at_64_px_on_the_cpu_does_not_crash(cifar_folder):
    """torch 2.14.1's oneDNN crashed the process (segfault / double free) training resnet_cifar in channels_last at
    64 px: a strided 1x1 convolution's backward. Run in a child process, so that a crash fails this test only."""
    import subprocess
    import sys

    code = f"""
import torch
from kdsearch.data import load_task
from kdsearch.spaces import create_model
from kdsearch.training import Recipe, fit
task = load_task({str(cifar_folder)!r}, input_size=64)
model = create_model({{"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}}, num_classes=10)
fit(model, task, Recipe(epochs=2, batch_size=64))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
