import shutil

import pytest
import torch

from kdsearch.data import DataSpec, load_task
from kdsearch.exceptions import DataError


def test_digits_default_is_upsampled_and_split_stratified(digits_task):
    task = digits_task
    assert task.input_shape == (1, 32, 32)
    assert task.num_classes == 10
    assert len(task.train_labels) + len(task.val_labels) == 1797
    assert abs(len(task.val_labels) / 1797 - 0.2) < 0.01
    # every class in both splits
    assert set(task.val_labels.tolist()) == set(range(10))
    x, y = next(task.batches("train", 256))
    assert abs(float(x.mean())) < 0.15 and abs(float(x.std()) - 1) < 0.15  # normalised with the train stats


def test_split_is_seeded():
    a, b, c = load_task("digits", seed=0), load_task("digits", seed=0), load_task("digits", seed=1)
    assert torch.equal(a.val_labels, b.val_labels) and torch.equal(a.val_images, b.val_images)
    assert not torch.equal(a.val_images, c.val_images)


def test_sample_batch_is_class_balanced(digits_task):
    _, y = digits_task.sample_batch(40, seed=3)
    assert torch.bincount(y, minlength=10).tolist() == [4] * 10


def test_augment_keeps_shape_and_changes_pixels(digits_task):
    g = torch.Generator().manual_seed(0)
    x = digits_task.train_images[:16]
    out = digits_task.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert not torch.equal(out, x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_the_cpu_batches(cifar_folder):
    """Images stay on the GPU and are cropped/flipped there; the batches must be exactly the CPU ones."""
    task = load_task(str(cifar_folder))
    kwargs = {"shuffle": True, "augment": True, "seed": 5, "drop_last": True, "with_index": True}
    for (xc, yc, ic), (xg, yg, ig) in zip(task.batches("train", 64, **kwargs), task.batches("train", 64, device="cuda", **kwargs)):
        assert xg.is_cuda and torch.equal(ic, ig.cpu()) and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)
    assert ("train", "cuda") in task._device_copies  # CIFAR fits: resident, not copied per batch


def test_image_folder_with_test_split(cifar_folder):
    task = load_task(str(cifar_folder))
    assert task.input_shape == (3, 32, 32)
    assert task.class_names[:3] == ["airplane", "automobile", "bird"]
    assert len(task.train_labels) == 400 and len(task.val_labels) == 100
    assert task.flip


def test_image_folder_subset_and_single_folder_split(cifar_folder, tmp_path):
    sub = load_task(str(cifar_folder), train_samples=100, val_samples=20)
    assert torch.bincount(sub.train_labels).tolist() == [10] * 10
    single = tmp_path / "flat"
    shutil.copytree(cifar_folder / "train", single)
    task = load_task(str(single))
    assert len(task.train_labels) == 320 and len(task.val_labels) == 80


def test_image_folder_resized_to_requested_size(cifar_folder):
    task = load_task(str(cifar_folder), input_size=48, train_samples=20, val_samples=10)
    assert task.input_shape == (3, 48, 48)


def test_fashion_mnist_idx(fashion_available):
    task = load_task("fashion-mnist", val_samples=500, train_samples=1000)
    assert task.input_shape == (1, 28, 28)
    assert task.class_names[-1] == "Ankle boot"
    assert len(task.train_labels) == 1000


@pytest.mark.parametrize(
    "spec, match",
    [
        ("/no/such/folder", "does not exist"),
        ("digitz", "Did you mean 'digits'"),
    ],
)
def test_bad_data_specs(spec, match):
    with pytest.raises(DataError, match=match):
        load_task(spec)


def test_image_folder_with_one_class_is_refused(cifar_folder, tmp_path):
    shutil.copytree(cifar_folder / "train" / "cat", tmp_path / "one" / "cat")
    with pytest.raises(DataError, match="only one class folder"):
        load_task(str(tmp_path / "one"))


def test_cifar_offline_error_is_clear(tmp_path):
    with pytest.raises(DataError, match="network access"):
        load_task(DataSpec(data="cifar10", data_root=str(tmp_path)))
