"""Training throughput of kdsearch's distillation trainer against torchdistill's KD, side by side.

Same teacher (ResNet-56-sized CIFAR ResNet), same student (ResNet-20), same real CIFAR-10 images
(a class-balanced subset of ../shared/data), same batch (128), SGD, same device, KD with T = 4.
torchdistill is driven the way its own CIFAR KD configs do it (DistillationBox, WeightedSumLoss of
KDLoss, DataLoader with per-sample RandomCrop + flip); its best over num_workers ∈ {0, 2} counts.
Reported: training images per second (evaluation excluded), the median of ``--repeats`` epochs
after one warm-up epoch. On a GPU (when lent) also AMP + channels_last and GPU utilisation.

    .venv/bin/python benchmarks/trainer_speed.py            # writes benchmarks/results/trainer_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _smoke import add_smoke, smoke_dir  # noqa: E402

from kdsearch.data import load_task
from kdsearch.distill import distill
from kdsearch.spaces import create_model
from kdsearch.training import Recipe

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"family": "resnet_cifar", "depth1": 9, "depth2": 9, "depth3": 9, "width1": 16, "width2": 32, "width3": 64}
STUDENT = {"family": "resnet_cifar", "depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64}


def cifar_folder(per_class: int = 256) -> Path:
    """A class-balanced subset of the shared CIFAR-10 JPEGs, cut once into benchmarks/.data/."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import SHARED_CIFAR, _extract_subset

    dest = ROOT / "benchmarks" / ".data" / ("cifar10-bench" if per_class == 256 else f"cifar10-bench-{per_class}")
    if not (dest / "test").exists():
        _extract_subset(dest, per_class_train=per_class, per_class_test=20)
    assert SHARED_CIFAR.exists()
    return dest


def ours(task, device, epochs, amp="auto", channels_last="auto", batch=128):
    """Our trainer with its defaults (channels_last on; AMP only on CUDA) unless told otherwise."""
    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10).to(device).eval()
    student = create_model(STUDENT, num_classes=10)
    recipe = Recipe(epochs=epochs, batch_size=batch, lr=0.1, weight_decay=5e-4, amp=amp, channels_last=channels_last)
    result = distill(student, teacher, task, recipe, "kd", loss_options={"ce_weight": 0.5, "kd_weight": 0.5}, device=device)
    return [h["img_per_s"] for h in result.history[1:]]  # first epoch is warm-up


def ensure_torchdistill(install: bool = True) -> bool:
    """The anchor comes from PyPI; install it on first use (into this interpreter's environment).

    Where nothing can be installed (the GPU machine, unless its wheels were carried) say so and go on
    without it: our own figures are still measured."""
    try:
        import torchdistill  # noqa: F401
        return True
    except ImportError:
        if install and subprocess.call([sys.executable, "-m", "pip", "install", "-q", "torchdistill"]) == 0:
            return True
    print("torchdistill is not installed and cannot be: its anchor rows are left out", flush=True)
    return False


def torchdistill_run(task, device, epochs, num_workers, batch=128):
    from torch.utils.data import Dataset, RandomSampler
    from torchdistill.core.distillation import get_distillation_box
    from torchvision import transforms

    class CifarTensors(Dataset):
        def __init__(self):
            self.x, self.y = task.train_images, task.train_labels
            self.tf = transforms.Compose([
                transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                transforms.ConvertImageDtype(torch.float32), transforms.Normalize(task.mean, task.std),
            ])

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.tf(self.x[i]), int(self.y[i])

    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10).to(device)
    student = create_model(STUDENT, num_classes=10).to(device)
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": batch, "num_workers": num_workers, "pin_memory": device.type == "cuda", "drop_last": True},
        },
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [], "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}},
        "scheduler": {"key": "MultiStepLR", "kwargs": {"milestones": [1000], "gamma": 0.1}},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                "teacher_module_io": "output", "temperature": 4.0, "alpha": 0.5, "reduction": "batchmean"}}, "weight": 1.0}}},
        },
    }
    box = get_distillation_box(teacher, student, {"train": CifarTensors()}, train_config, device, None, False, 1.0)
    rates = []
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        seen, start = 0, time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            seen += len(targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
        box.post_epoch_process()
    return rates[1:]


def gpu_utilisation_during(fn):
    """Mean GPU utilisation sampled by nvidia-smi while fn runs (None without nvidia-smi)."""
    import threading

    samples, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                samples.append(float(out.split()[0]))
            except Exception:
                return
            time.sleep(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    result = fn()
    stop.set()
    thread.join()
    return result, (statistics.mean(samples[2:]) if len(samples) > 4 else None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs + 1 warm-up")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--gpu-only", action="store_true", help="only the CUDA rows (benchmarks/gpu.sh); writes trainer_speed_gpu.json")
    parser.add_argument("--train-per-class", type=int, default=256,
                        help="training images per class (a GPU needs more than the CPU default to fill an epoch)")
    parser.add_argument("--no-install", action="store_true", help="do not pip-install the torchdistill anchor")
    add_smoke(parser, "1 warm-up + 1 timed epoch on 20 images per class; torchdistill only if installed")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.train_per_class, args.no_install, args.out = 2, 20, True, str(smoke_dir("trainer_speed"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    anchor = ensure_torchdistill(install=not args.no_install)
    task = load_task(str(cifar_folder(args.train_per_class)))
    if args.gpu_only:
        result = {"train_images": len(task.train_labels), "batch_size": 128, "cuda": cuda_rows(task, args.epochs, anchor)}
        return _write(result, Path(args.out) / "trainer_speed_gpu.json")
    rows = {}
    device = torch.device("cpu")
    rows["kdsearch_cpu"] = statistics.median(ours(task, device, args.epochs))
    # the same trainer without channels_last, to show where the gain comes from
    rows["kdsearch_cpu_channels_last_off"] = statistics.median(ours(task, device, args.epochs, channels_last="off"))
    td = {w: statistics.median(torchdistill_run(task, device, args.epochs, w)) for w in (0, 2)} if anchor else {}
    rows["torchdistill_cpu"] = max(td.values()) if td else None
    rows["torchdistill_cpu_by_workers"] = td
    result = {
        "device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "batch_size": 128, "teacher": "resnet_cifar 9-9-9 (ResNet-56-sized)", "student": "resnet_cifar 3-3-3 (ResNet-20)",
        "train_images": len(task.train_labels), "img_per_s": rows,
        "ratio_vs_torchdistill": rows["kdsearch_cpu"] / rows["torchdistill_cpu"] if td else None,
    }
    if torch.cuda.is_available():
        result["cuda"] = cuda_rows(task, args.epochs, anchor)
    _write(result, Path(args.out) / ("trainer_speed.json" if not torch.cuda.is_available() else "trainer_speed_gpu.json"))


def cuda_rows(task, epochs: int, anchor: bool) -> dict:
    """img/s of our trainer in fp32 and in bf16 + channels_last (with GPU utilisation), and torchdistill's."""
    cuda = torch.device("cuda")
    fp32 = statistics.median(ours(task, cuda, epochs, amp="none", channels_last="off"))
    amp_rates, util = gpu_utilisation_during(lambda: ours(task, cuda, epochs, amp="bf16", channels_last="on"))
    # a 4x batch: if img/s grows with it, the step is bound by the host queueing kernels, not by the GPU's math
    big_rates, big_util = gpu_utilisation_during(lambda: ours(task, cuda, epochs, amp="bf16", channels_last="on", batch=512))
    rows = {"gpu": torch.cuda.get_device_name(), "kdsearch_fp32": fp32, "kdsearch_bf16_channels_last": statistics.median(amp_rates),
            "gpu_utilisation_pct": util, "amp_speedup": statistics.median(amp_rates) / fp32,
            "kdsearch_bf16_channels_last_batch512": statistics.median(big_rates), "gpu_utilisation_pct_batch512": big_util}
    if anchor:
        try:
            rows["torchdistill_fp32"] = max(statistics.median(torchdistill_run(task, cuda, epochs, w)) for w in (0, 4))
            rows["ratio_vs_torchdistill"] = rows["kdsearch_bf16_channels_last"] / rows["torchdistill_fp32"]
        except Exception as exc:  # a carried wheel built for another torch: keep our rows, say why the anchor is missing
            rows["torchdistill_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return rows


def _write(result: dict, path: Path) -> None:
    from kdsearch._util import atomic_write_json

    print(json.dumps(result, indent=2))
    atomic_write_json(path, result)


if __name__ == "__main__":
    main()
