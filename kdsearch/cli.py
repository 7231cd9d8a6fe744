"""The ``kdsearch`` command: parse, call the API, turn a KdsearchError into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from kdsearch.exceptions import KdsearchError

EXAMPLES = """examples:
  kdsearch find --teacher resnet101 --budget 10ms
  kdsearch find --teacher resnet56.pt --data ~/data/cifar10 --budget 2ms --space search_spaces/resnet_cifar.yaml --out runs/c10
  kdsearch report runs/c10
  kdsearch export runs/c10 --best --format onnx --out student/
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from kdsearch import __version__

    parser = argparse.ArgumentParser(
        prog="kdsearch", description="Find the best student network to distil from a teacher under a latency budget.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kdsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{find,report,export,distill}")

    f = sub.add_parser("find", help="search, rank and distil students; writes a run folder", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--teacher", required=True, help="timm model name, package.module:callable, or a TorchScript/torch.export file")
    f.add_argument("--teacher-weights", help="checkpoint for the teacher (state_dict, {'state_dict'|'model': …}, safetensors)")
    f.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="do not fetch timm's pretrained teacher weights")
    f.add_argument("--teacher-epochs", type=_positive_int, help="epochs to prepare (fine-tune) the teacher when needed")
    f.add_argument("--budget", required=True, help="latency (10ms, 500us), FLOPs (300MFLOPs) or parameters (5Mparams)")
    f.add_argument("--data", default="digits", help="digits | fashion-mnist | cifar10 | cifar100 | an ImageFolder directory")
    f.add_argument("--data-root", help="folder for fashion-mnist IDX files or torchvision CIFAR downloads")
    f.add_argument("--input-size", type=_positive_int, help="resize images to this many pixels square (default: native ≤64 px, else 224)")
    f.add_argument("--train-samples", type=_positive_int, help="class-balanced subset of the training images")
    f.add_argument("--val-samples", type=_positive_int, help="class-balanced subset of the validation images")
    f.add_argument("--space", help="search-space YAML (default follows the input resolution)")
    f.add_argument(
        "--proxy", default="default",
        help="ranking proxy, or several comma-separated (the first ranks); 'a+b' or '2*a+b' is a rank ensemble; "
        "'default' is the proxy chosen on distilled ground truth (README §6; today params)",
    )
    f.add_argument("--sampler", default="auto", choices=["auto", "tpe", "nsga2", "random", "brute"], help="Optuna sampler; auto = exhaustive for small spaces, else TPE")
    f.add_argument("--trials", type=_positive_int, default=100, help="candidates to score")
    f.add_argument("--timeout", type=float, help="stop scoring after this many seconds")
    f.add_argument("--top-k", type=_positive_int, default=3, help="best candidates to distil")
    f.add_argument("--epochs", type=_positive_int, default=10, help="distillation epochs per student")
    f.add_argument("--loss", default="kd", help="distillation loss: kd, dkd, fitnet, diswot, cka, taid, pld, ce (no KD)")
    f.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE", help="override a loss setting, e.g. temperature=2")
    f.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]: where latency is measured and training runs")
    f.add_argument("--batch-size", type=_positive_int, default=1, help="batch size for latency measurement")
    f.add_argument("--threads", type=_positive_int, default=1, help="CPU threads for latency measurement (pinned and recorded)")
    f.add_argument("--storage", help="Optuna storage URL (default: sqlite in the run folder)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", help="run folder (default runs/<teacher>-<budget>-<time>); an existing one is resumed")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")

    r = sub.add_parser("report", help="print the Pareto table of a run and (re)write its report.html")
    r.add_argument("run_dir")

    e = sub.add_parser("export", help="write a distilled student as safetensors, TorchScript or ONNX")
    e.add_argument("run_dir")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the most accurate distilled student within budget (default)")
    which.add_argument("--trial", type=int, help="the student of this trial number")
    e.add_argument("--format", default="safetensors", choices=["safetensors", "torchscript", "onnx"])
    e.add_argument("--out", help="output folder (default <run>/export)")
    d = sub.add_parser("distill", help="distil one student from a teacher (the trainer find uses)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--teacher", help="as for find (default: the --from-run run's teacher)")
    d.add_argument("--teacher-weights")
    d.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    d.add_argument("--teacher-epochs", type=_positive_int)
    d.add_argument("--student", help="a timm model name or a candidate config as JSON")
    d.add_argument("--from-run", help="take the student config (and by default teacher and data) from this run folder")
    d.add_argument("--trial", type=int, help="with --from-run: the trial whose candidate to distil")
    d.add_argument("--data", help="as for find (default: digits, or the --from-run run's data)")
    d.add_argument("--data-root")
    d.add_argument("--input-size", type=_positive_int)
    d.add_argument("--train-samples", type=_positive_int)
    d.add_argument("--val-samples", type=_positive_int)
    d.add_argument("--loss", default="kd", help="kd, dkd, fitnet, diswot, cka, taid, pld, ce (no KD)")
    d.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE", help="override a loss setting, e.g. beta=8")
    d.add_argument("--epochs", type=_positive_int, default=10)
    d.add_argument("--batch-size", type=_positive_int, default=64, help="per process under torchrun")
    d.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--weight-decay", type=float, default=5e-4)
    d.add_argument("--schedule", choices=["cosine", "step"], default="cosine")
    d.add_argument("--warmup-epochs", type=float, default=1.0)
    d.add_argument("--label-smoothing", type=float, default=0.0)
    d.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip (teacher logits are then cached once)")
    d.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto", help="mixed precision on CUDA")
    d.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    d.add_argument("--compile", action="store_true", help="torch.compile the student")
    d.add_argument("--clip-grad-norm", type=float, default=0.0, help="0 = off")
    d.add_argument("--device", default="auto")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="student", help="folder for checkpoint, metrics.csv, model.safetensors, student.yaml")
    d.add_argument("--resume", action="store_true", help="continue the distillation held in --out")
    d.add_argument("-q", "--quiet", action="store_true")
    return parser


def _loss_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KdsearchError(f"--loss-opt {pair!r} is not KEY=VALUE; write e.g. --loss-opt temperature=2.")
        options[key.strip()] = value.strip()
    return options


def _distill(args) -> int:
    from kdsearch.pipeline import train_student
    from kdsearch.training import Recipe

    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, augment=args.augment,
        seed=args.seed, amp=args.amp, channels_last=args.channels_last, compile=args.compile, clip_grad_norm=args.clip_grad_norm,
    )
    result = train_student(
        args.teacher, args.student, from_run=args.from_run, trial=args.trial, data=args.data, data_root=args.data_root,
        input_size=args.input_size, train_samples=args.train_samples, val_samples=args.val_samples,
        teacher_weights=args.teacher_weights, pretrained=args.pretrained, teacher_epochs=args.teacher_epochs,
        loss=args.loss, loss_options=_loss_options(args.loss_opt), recipe=recipe, device=args.device, out=args.out,
        resume=args.resume, quiet=args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        print(f"distilled {json.dumps(result['config'], sort_keys=True)} with {args.loss}: val acc {result['val_accuracy']:.4f} -> {args.out}")
    return 0


def _find(args) -> int:
    from kdsearch.pipeline import find
    from kdsearch.report import build_report

    result = find(
        teacher=args.teacher, budget=args.budget, data=args.data, data_root=args.data_root, input_size=args.input_size,
        train_samples=args.train_samples, val_samples=args.val_samples, space=args.space, out=args.out,
        teacher_weights=args.teacher_weights, pretrained=args.pretrained, teacher_epochs=args.teacher_epochs,
        trials=args.trials, timeout=args.timeout, top_k=args.top_k, proxy=args.proxy, sampler=args.sampler,
        device=args.device, batch_size=args.batch_size, threads=args.threads, epochs=args.epochs,
        loss=args.loss, loss_options=_loss_options(args.loss_opt),
        storage=args.storage, seed=args.seed, quiet=args.quiet,
    )
    print(build_report(result.run_dir).to_text())
    return 0


def _report(args) -> int:
    from kdsearch.report import build_report

    print(build_report(args.run_dir).to_text())
    return 0


def _export(args) -> int:
    from kdsearch.export import export

    result = export(args.run_dir, best=args.trial is None, trial=args.trial, format=args.format, out=args.out)
    print(
        f"exported {result.candidate_id} (val acc {result.accuracy:.4f}) as {result.format} to {result.path}; "
        f"verified on real validation images: max abs diff {result.max_abs_diff:.2e}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"find": _find, "report": _report, "export": _export, "distill": _distill}
    try:
        code = handlers[args.command](args)
    except KdsearchError as exc:
        print(f"kdsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdsearch: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    from kdsearch.training import close_distributed

    close_distributed()  # only after success: a failed rank must not wait in a collective for the others
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
