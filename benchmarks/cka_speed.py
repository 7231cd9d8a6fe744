"""CKA speed and accuracy: kdsearch.similarity against torch-cka and ckatorch (both from PyPI), same inputs.

Cases (real CIFAR-10 JPEGs from ../shared/data, random-init timm models — CKA's cost does not depend on
training):
1. one pair of feature matrices: 2048 × 512 (ResNet-18 pooled) vs 2048 × 2048 (ResNet-50 pooled),
   linear CKA (biased, Kornblith et al.) — torch-cka has no feature-matrix entry point, so its own
   ``_HSIC`` on Grams stands in for it (unbiased, as its ``compare`` does);
2. all layer pairs of ResNet-18 × ResNet-34 (every residual block output: 8 × 16 pairs) over 4
   batches of 64 images, minibatch CKA with unbiased HSIC (Nguyen et al.): ``torch_cka.CKA.compare``
   (hooks + forward passes included), ckatorch's ``cka_batch`` per pair on the same hooked features
   (its ``CKA`` class cannot take 4-D conv features), and ``kdsearch.similarity.cka_matrix``.
Times: median of ``--repeats`` runs after a warm-up. Error: max |CKA − fp64 reference|, the reference
being the same estimator computed directly in float64 (textbook HSIC₁ formula, per batch, summed).

    .venv/bin/python benchmarks/cka_speed.py       # writes benchmarks/results/cka_speed.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from _smoke import add_smoke, skip, smoke_dir, thread_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def anchors_installed() -> bool:
    try:
        import ckatorch  # noqa: F401
        import torch_cka  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_anchors(install: bool = True) -> None:
    """The anchors come from PyPI; install them on first use (torch-cka imports matplotlib at import time).

    With ``install=False`` (the GPU machine, which reaches no registry) they must already be importable:
    benchmarks/gpu_prepare.sh carries their wheels."""
    try:
        import ckatorch  # noqa: F401
        import torch_cka  # noqa: F401
    except ImportError:
        if not install:
            raise SystemExit("cka_speed: torch-cka and ckatorch are not installed; run benchmarks/gpu_prepare.sh and carry .gpu") from None
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "torch-cka==0.21", "ckatorch==1.0.3", "matplotlib"])


def cifar_images(n: int) -> torch.Tensor:
    from trainer_speed import cifar_folder

    from kdsearch.data import load_task

    task = load_task(str(cifar_folder()))
    x, _ = task.sample_batch(n, seed=0)
    return x


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def block_names(model: nn.Module) -> list[str]:
    return [f"layer{i}.{j}" for i in range(1, 5) for j, _ in enumerate(getattr(model, f"layer{i}"))]


def reference_minibatch_cka(feats_a: list[list[torch.Tensor]], feats_b: list[list[torch.Tensor]]) -> torch.Tensor:
    """Direct fp64 HSIC₁ (Song et al.), summed over batches: CKA = Σ HSIC(K, L) / sqrt(Σ HSIC(K, K) Σ HSIC(L, L))."""

    def hsic1(k, lg):
        n = k.shape[0]
        k, lg = k.clone(), lg.clone()
        k.fill_diagonal_(0)
        lg.fill_diagonal_(0)
        one = torch.ones(n, dtype=torch.float64, device=k.device)
        return (torch.trace(k @ lg) + (one @ k @ one) * (one @ lg @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ k @ lg @ one)) / (n * (n - 3))

    def gram(f):
        f = f.flatten(1).double()
        f = f - f.mean(0)
        return f @ f.T

    la, lb = len(feats_a[0]), len(feats_b[0])
    xy = torch.zeros(la, lb, dtype=torch.float64)
    xx = torch.zeros(la, dtype=torch.float64)
    yy = torch.zeros(lb, dtype=torch.float64)
    for fa, fb in zip(feats_a, feats_b):
        ka, kb = [gram(f) for f in fa], [gram(f) for f in fb]
        for i, k in enumerate(ka):
            xx[i] += hsic1(k, k).cpu()
            for j, lg in enumerate(kb):
                xy[i, j] += hsic1(k, lg).cpu()
        for j, lg in enumerate(kb):
            yy[j] += hsic1(lg, lg).cpu()
    return xy / torch.sqrt(xx[:, None] * yy[None, :])


def hooked_features(model, names, batches):
    modules = dict(model.named_modules())
    store = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: store.__setitem__(n, out)) for n in names]
    per_batch = []
    with torch.no_grad():
        for x in batches:
            model(x)
            per_batch.append([store[n] for n in names])
    for h in handles:
        h.remove()
    return per_batch


def feature_pair_case(device, repeats, n: int = 2048):
    import timm
    from ckatorch.core import cka_base
    from torch_cka import CKA as TorchCKA

    from kdsearch.similarity import linear_cka

    torch.manual_seed(0)
    x = cifar_images(n).to(device)
    with torch.no_grad():
        r18 = timm.create_model("resnet18", pretrained=False, num_classes=0).to(device).eval()
        r50 = timm.create_model("resnet50", pretrained=False, num_classes=0).to(device).eval()
        fa = torch.cat([r18(b) for b in x.split(256)])
        fb = torch.cat([r50(b) for b in x.split(256)])
    ref = float(cka_base(fa.double().cpu(), fb.double().cpu()))  # biased linear CKA, fp64, Kornblith's formula

    def ours():
        return linear_cka(fa, fb)

    def ckatorch_fn():
        return cka_base(fa, fb)  # computes in float64 internally

    class _Shim:  # torch-cka's estimator needs only .device from its CKA object
        pass

    shim = _Shim()
    shim.device = device

    def torch_cka_fn():
        k, lg = fa @ fa.T, fb @ fb.T
        k.fill_diagonal_(0.0)
        lg.fill_diagonal_(0.0)
        hsic = TorchCKA._HSIC
        return hsic(shim, k, lg) / (hsic(shim, k, k) ** 0.5 * hsic(shim, lg, lg) ** 0.5)

    rows = {}
    for name, fn in (("kdsearch", ours), ("ckatorch", ckatorch_fn), ("torch-cka", torch_cka_fn)):
        seconds, value = timed(fn, repeats)
        rows[name] = {"seconds": seconds, "cka": float(value), "abs_err_vs_fp64_biased": abs(float(value) - ref)}
    rows["reference_fp64_biased"] = ref
    return rows


def all_pairs_case(device, repeats, batches=4, batch_size=64):
    import timm
    from ckatorch.core import cka_batch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA as TorchCKA

    from kdsearch.similarity import MinibatchCKA, cka_matrix

    torch.manual_seed(0)
    images = cifar_images(batches * batch_size).to(device)
    r18 = timm.create_model("resnet18", pretrained=False, num_classes=10).to(device).eval()
    r34 = timm.create_model("resnet34", pretrained=False, num_classes=10).to(device).eval()
    names18, names34 = block_names(r18), block_names(r34)
    batch_list = list(images.split(batch_size))

    feats18 = hooked_features(r18, names18, batch_list)
    feats34 = hooked_features(r34, names34, batch_list)
    reference = reference_minibatch_cka([[f.cpu() for f in b] for b in feats18], [[f.cpu() for f in b] for b in feats34])

    def ours_e2e():
        return cka_matrix(r18, r34, batch_list, names18, names34)[0]

    def ours_math():
        meter = MinibatchCKA()
        for fa, fb in zip(feats18, feats34):
            meter.update(fa, fb)
        return meter.compute()

    def ckatorch_math(f18=feats18, f34=feats34):
        out = torch.zeros(len(names18), len(names34))
        for i in range(len(names18)):
            x = torch.stack([b[i].flatten(1) for b in f18])  # (batches, n, features): its minibatch form
            for j in range(len(names34)):
                out[i, j] = cka_batch(x, torch.stack([b[j].flatten(1) for b in f34]))
        return out

    def ckatorch_e2e():
        return ckatorch_math(hooked_features(r18, names18, batch_list), hooked_features(r34, names34, batch_list))

    index_loader = DataLoader(TensorDataset(torch.arange(batches).repeat_interleave(batch_size)), batch_size=batch_size)
    image_loader = DataLoader(TensorDataset(images.cpu()), batch_size=batch_size, shuffle=False)

    def torch_cka(model_a, model_b, loader, layers_a, layers_b):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = TorchCKA(model_a, model_b, "a", "b", layers_a, layers_b, device=str(device))
            cka.compare(loader, loader)
        for model in (model_a, model_b):  # its hooks stay on the models: remove them for the next contender
            for module in model.modules():
                module._forward_hooks.clear()
        return cka.hsic_matrix

    replay18, replay34 = _Replay(feats18), _Replay(feats34)

    def torch_cka_math():
        return torch_cka(replay18, replay34, index_loader, replay18.names, replay34.names)

    def torch_cka_e2e():
        return torch_cka(r18, r34, image_loader, names18, names34)

    import tqdm

    tqdm_init = tqdm.tqdm.__init__
    rows = {"cka_only": {}, "end_to_end": {}}
    contenders = {
        "cka_only": (("kdsearch", ours_math), ("ckatorch", ckatorch_math), ("torch-cka", torch_cka_math)),
        "end_to_end": (("kdsearch", ours_e2e), ("ckatorch", ckatorch_e2e), ("torch-cka", torch_cka_e2e)),
    }
    try:
        # torch-cka draws a progress bar per call; silence it so the terminal is not part of its time
        tqdm.tqdm.__init__ = lambda self, *a, **k: tqdm_init(self, *a, **{**k, "disable": True})
        for mode, fns in contenders.items():
            for name, fn in fns:
                seconds, value = timed(fn, repeats)
                value = torch.as_tensor(value).cpu().double()
                rows[mode][name] = {"seconds": seconds, "max_abs_err_vs_fp64": float((value - reference).abs().max()),
                                    "nan": bool(torch.isnan(value).any())}
    finally:
        tqdm.tqdm.__init__ = tqdm_init
    rows["pairs"] = len(names18) * len(names34)
    rows["batches"], rows["batch_size"] = batches, batch_size
    return rows


class _Replay(nn.Module):
    """Plays back stored per-batch features through Identity layers, so a library's hooks see exactly them."""

    def __init__(self, per_batch: list[list[torch.Tensor]]):
        super().__init__()
        self.per_batch = per_batch
        self.taps = nn.ModuleList(nn.Identity() for _ in per_batch[0])
        self.names = [f"taps.{i}" for i in range(len(self.taps))]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        feats = self.per_batch[int(index.flatten()[0])]
        for tap, f in zip(self.taps, feats):
            tap(f)
        return feats[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cka_speed.json"))
    parser.add_argument("--no-install", action="store_true", help="do not pip-install the anchors (they must be importable)")
    add_smoke(parser, "1 repeat, 256 images, one batch of 32 for all pairs")
    args = parser.parse_args()
    sizes = {"n": 2048}, {}
    if args.smoke:
        args.repeats, args.out, sizes = 1, str(smoke_dir("cka_speed") / "cka_speed.json"), ({"n": 256}, {"batches": 1, "batch_size": 32})
        if not anchors_installed():
            skip("cka_speed: the anchors torch-cka and ckatorch are not installed (a run without --smoke installs them)")
    ensure_anchors(install=not args.no_install)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(thread_count(2))
    features = feature_pair_case(device, args.repeats, **sizes[0])
    pairs = all_pairs_case(device, args.repeats, **sizes[1])
    print("\n| case | library | seconds | ratio (theirs / ours) | error vs fp64 |\n|---|---|---|---|---|")
    for case, rows, err in (("2048×512 vs 2048×2048", features, "abs_err_vs_fp64_biased"),
                            ("ResNet-18 × ResNet-34 all pairs, CKA only", pairs["cka_only"], "max_abs_err_vs_fp64"),
                            ("ResNet-18 × ResNet-34 all pairs, with forward passes", pairs["end_to_end"], "max_abs_err_vs_fp64")):
        for lib in ("kdsearch", "torch-cka", "ckatorch"):
            ratio = rows[lib]["seconds"] / rows["kdsearch"]["seconds"]
            print(f"| {case} | {lib} | {rows[lib]['seconds']:.4f} | {ratio:.1f}× | {rows[lib][err]:.2e} |")
    cka_only, e2e = pairs["cka_only"], pairs["end_to_end"]
    record = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "repeats": args.repeats,
        "features_2048": features,
        "resnet18_x_resnet34_all_pairs": pairs,
        "ratio_vs_torch_cka": cka_only["torch-cka"]["seconds"] / cka_only["kdsearch"]["seconds"],
        "ratio_vs_ckatorch": cka_only["ckatorch"]["seconds"] / cka_only["kdsearch"]["seconds"],
        "max_abs_err_vs_fp64": max(cka_only["kdsearch"]["max_abs_err_vs_fp64"], e2e["kdsearch"]["max_abs_err_vs_fp64"]),
        "end_to_end_ratio_vs_torch_cka": e2e["torch-cka"]["seconds"] / e2e["kdsearch"]["seconds"],
        "end_to_end_ratio_vs_ckatorch": e2e["ckatorch"]["seconds"] / e2e["kdsearch"]["seconds"],
        "features_ratio_vs_torch_cka": features["torch-cka"]["seconds"] / features["kdsearch"]["seconds"],
        "features_ratio_vs_ckatorch": features["ckatorch"]["seconds"] / features["kdsearch"]["seconds"],
    }
    print({k: v for k, v in record.items() if "ratio" in k or k.startswith("max")})
    from kdsearch._util import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
