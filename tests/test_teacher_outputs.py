"""The teacher's logits computed once per (teacher, data, seed, augmentation) and shared by every student."""

import numpy as np
import pytest
import torch

from kdsearch.distill import distill
from kdsearch.spaces import create_model
from kdsearch.teacher.outputs import TOP_K, TeacherOutputs, _rebuild, teacher_outputs
from kdsearch.training import Recipe, epoch_seed

TEACHER_CFG = {"family": "resnet_cifar", "depth1": 1, "depth2": 1, "depth3": 1, "width1": 8, "width2": 16, "width3": 32}
STUDENT_CFG = {**TEACHER_CFG, "width3": 16}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model(TEACHER_CFG, num_classes=10, in_chans=1).eval()


def _views(task, seed, batch_size):
    """image index -> its augmented view, as the trainer would see it with this batch size."""
    out = {}
    for x, _, idx in task.batches("train", batch_size, shuffle=True, augment=True, seed=seed, drop_last=True, with_index=True):
        out.update({int(i): v for i, v in zip(idx, x)})
    return out


def test_augmentation_stream_is_a_function_of_seed_and_epoch_alone(digits_task):
    a, b = _views(digits_task, 7, 32), _views(digits_task, 7, 100)  # two students' batch sizes
    common = set(a) & set(b)
    assert len(common) > 1000 and all(torch.equal(a[i], b[i]) for i in common)
    c = _views(digits_task, 8, 32)  # the next epoch: other views
    both = common & set(c)
    assert sum(not torch.equal(a[i], c[i]) for i in both) > len(both) // 2


def test_outputs_are_computed_once_and_reused_then_resume_where_cut(digits_task, teacher, tmp_path):
    recipe = Recipe(epochs=3, batch_size=64)
    first = teacher_outputs(teacher, digits_task, recipe, root=tmp_path)
    assert first.filled_now == 3 and first.missing() == []
    again = teacher_outputs(teacher, digits_task, recipe, root=tmp_path)
    assert again.key == first.key and again.filled_now == 0  # another student, or a later run: read, not computed
    (first.folder / "epoch0001.npy").unlink()  # a run killed while filling
    resumed = teacher_outputs(teacher, digits_task, recipe, root=tmp_path)
    assert resumed.filled_now == 1
    # what is stored is the teacher on exactly those views (fp16)
    x, _, idx = next(digits_task.batches("train", 64, shuffle=True, augment=True, seed=epoch_seed(recipe, 2), with_index=True))
    with torch.no_grad():
        live = teacher(x)
    assert torch.allclose(resumed.lookup(2)(idx), live, atol=2e-2, rtol=2e-3)
    other = torch.manual_seed(1) and create_model(TEACHER_CFG, num_classes=10, in_chans=1).eval()
    assert teacher_outputs(other, digits_task, Recipe(epochs=1), root=tmp_path).key != first.key  # never another teacher's


def test_cached_and_live_teacher_give_the_same_loss(digits_task, teacher, tmp_path):
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05)
    results = {}
    for shared in (False, True):
        torch.manual_seed(0)
        student = create_model(STUDENT_CFG, num_classes=10, in_chans=1)
        results[shared] = distill(student, teacher, digits_task, recipe, "kd", share_teacher_outputs=shared, outputs_root=tmp_path)
    assert results[False].teacher_source == "live" and results[True].teacher_source.startswith("shared outputs")
    live, cached = results[False].history[0]["loss"], results[True].history[0]["loss"]
    assert cached == pytest.approx(live, rel=1e-3)


def test_a_loss_that_needs_features_keeps_the_live_teacher(digits_task, teacher, tmp_path):
    torch.manual_seed(0)
    student = create_model(STUDENT_CFG, num_classes=10, in_chans=1)
    result = distill(student, teacher, digits_task, Recipe(epochs=1, batch_size=64), "fitnet", outputs_root=tmp_path)
    assert result.teacher_source == "live" and not any(tmp_path.iterdir())


def test_top_k_storage_keeps_the_top_classes_and_the_rest_of_the_mass(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(6, 1000) * 3
    store = TeacherOutputs(tmp_path / "k", epochs=1, augment=True, num_classes=1000)
    store.folder.mkdir()
    store._write(0, logits)
    stored = np.load(store._file(0), mmap_mode="r")
    assert stored.dtype.names == ("values", "indices", "lse") and stored.nbytes < logits.numel() * 2 / 10
    rebuilt = store.lookup(0)(torch.arange(6))
    p, q = logits.softmax(1), rebuilt.softmax(1)
    top = logits.topk(TOP_K, dim=1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=2e-3)  # fp16 values
    assert torch.allclose(q.sum(1), torch.ones(6), atol=1e-5)
    assert torch.equal(_rebuild(stored["values"], stored["indices"], stored["lse"], 1000).argmax(1), logits.argmax(1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cached_and_live_teacher_agree_on_cuda(digits_task, teacher, tmp_path, amp):
    """On the GPU the cache is filled in large batches (bf16 under AMP) and read from device memory."""
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, amp=amp)
    losses = {}
    for shared in (False, True):
        torch.manual_seed(0)
        student = create_model(STUDENT_CFG, num_classes=10, in_chans=1)
        result = distill(student, teacher, digits_task, recipe, "kd", device="cuda", share_teacher_outputs=shared,
                         outputs_root=tmp_path)
        losses[shared] = result.history[0]["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3 if amp == "none" else 2e-2)
