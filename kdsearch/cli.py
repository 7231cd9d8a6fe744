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


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit 2 (argparse would print the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"kdsearch: error: {message}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    from kdsearch._version import __version__

    parser = _Parser(
        prog="kdsearch", description="Find the best student network to distil from a teacher under a latency budget.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kdsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{find,worker,report,export,distill}")
    names = _names()
    _find_parser(sub.add_parser("find", help="search, rank and distil students; writes a run folder",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter), names)
    _worker_parser(sub.add_parser("worker", help="join a run through its storage and take its trials and students"))
    sub.add_parser("report", help="print a run's front and self-check and (re)write its HTML report").add_argument("run_dir")
    _export_parser(sub.add_parser("export", help="write a distilled student as safetensors, TorchScript or ONNX"), names)
    _distill_parser(sub.add_parser("distill", help="distil one student from a teacher (the trainer find uses)",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter), names)
    return parser


def _names() -> dict:
    """The choices each option lists, generated from the registries so help never falls behind them."""
    from kdsearch.data import LOADERS
    from kdsearch.distill import list_losses
    from kdsearch.export import FORMATS
    from kdsearch.training import RECIPE_CHOICES

    return {"data": " | ".join(LOADERS.names()), "losses": ", ".join(list_losses()), "formats": FORMATS.names(),
            "recipe": RECIPE_CHOICES}


def _teacher_and_data_options(p: argparse.ArgumentParser, names: dict) -> None:
    """distill's teacher and data options: find's, each defaulting to the --from-run run's value."""
    from kdsearch.run.options import TEACHER_AND_DATA

    for option in TEACHER_AND_DATA:
        listed = f" ({names['data']})" if option.name == "data" else ""
        extra = {"help": f"{option.help}{listed} (default: the --from-run run's)"} if option.name in ("teacher", "data") else {}
        option.add_to(p, default=None, required=False, **extra)


def _find_parser(f: argparse.ArgumentParser, names: dict) -> None:
    from kdsearch.run.options import add_find_options

    add_find_options(f)  # every option, its default, type, choices and help: kdsearch.run.options.FIND_OPTIONS
    _verbose(f)


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug lines too, and Optuna's own log")


def _worker_parser(w: argparse.ArgumentParser) -> None:
    from kdsearch.run.options import POSITIVE

    w.add_argument("run_dir", help="the run folder of 'kdsearch find' (shared with this machine); its storage is read from it")
    w.add_argument("--device", help="auto | cpu | cuda[:N] (default: the run's device)")
    w.add_argument("--index", type=POSITIVE, help="this worker's number (its sampler's seed); default from host and process")
    w.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # find's local workers leave when find is gone
    w.add_argument("--until-idle", action="store_true",
                   help="leave once nothing is left to take, instead of waiting until the run is done")
    w.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    _verbose(w)


def _export_parser(e: argparse.ArgumentParser, names: dict) -> None:
    e.add_argument("run_dir")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the most accurate distilled student within budget (default)")
    which.add_argument("--trial", type=int, help="the student of this trial number")
    e.add_argument("--format", choices=names["formats"], help="default: the format of the run's --runtime "
                   "(onnx for onnxruntime, torchscript for torchscript, else safetensors)")
    e.add_argument("--out", help="output folder (default <run>/export)")


def _distill_parser(d: argparse.ArgumentParser, names: dict) -> None:
    from kdsearch.run.options import POSITIVE

    choices = names["recipe"]
    _teacher_and_data_options(d, names)
    d.add_argument("--student", help="a timm model name or a candidate config as JSON")
    d.add_argument("--from-run", help="take the student config and, unless given here, every setting of the run (teacher, data, loss, recipe)")
    d.add_argument("--trial", type=int, help="with --from-run: the trial whose candidate to distil")
    d.add_argument("--loss", help=f"{names['losses']} (ce = no KD); default kd, or the --from-run run's")
    d.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE", help="override a loss setting, e.g. beta=8")
    # Recipe settings default to None: "not given" lets --from-run supply the run's value, else Recipe()'s.
    d.add_argument("--epochs", type=POSITIVE, help="default 10, or the run's")
    d.add_argument("--batch-size", type=POSITIVE, help="training batch size, per process under torchrun (default 64, or the run's)")
    d.add_argument("--optimizer", choices=choices["optimizer"], help="default sgd")
    d.add_argument("--lr", type=float, help="default 0.05")
    d.add_argument("--weight-decay", type=float, help="default 5e-4")
    d.add_argument("--schedule", choices=choices["schedule"], help="default cosine")
    d.add_argument("--warmup-epochs", type=float, help="default 1")
    d.add_argument("--label-smoothing", type=float, help="default 0")
    d.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no random crop/flip (teacher logits are then cached once)")
    d.add_argument("--amp", choices=choices["amp"], help="mixed precision on CUDA (default auto)")
    d.add_argument("--channels-last", choices=choices["channels_last"], help="default auto")
    d.add_argument("--compile", action="store_true", default=None, help="torch.compile the student")
    d.add_argument("--clip-grad-norm", type=float, help="0 = off (default)")
    d.add_argument("--device", default="auto")
    d.add_argument("--seed", type=int, help="default 0, or the run's")
    d.add_argument("--out", default="student", help="student folder (weights, metadata, metrics; the checkpoint while training)")
    d.add_argument("--resume", action="store_true", help="continue the distillation held in --out")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    _verbose(d)


def _loss_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KdsearchError(f"--loss-opt {pair!r} is not KEY=VALUE; write e.g. --loss-opt temperature=2.")
        options[key.strip()] = value.strip()
    return options


def _distill(args) -> int:
    from dataclasses import fields

    from kdsearch.pipeline import train_student
    from kdsearch.training import Recipe

    # every Recipe field but restarts (halving sets it) is a distill option of the same name; None = not given (the
    # run's or Recipe()'s value)
    recipe = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name, None) is not None}
    result = train_student(
        args.teacher, args.student, from_run=args.from_run, trial=args.trial, data=args.data, data_root=args.data_root,
        input_size=args.input_size, train_samples=args.train_samples, val_samples=args.val_samples,
        teacher_weights=args.teacher_weights, pretrained=args.pretrained, teacher_epochs=args.teacher_epochs,
        loss=args.loss, loss_options=_loss_options(args.loss_opt) or None, recipe=recipe, device=args.device, out=args.out,
        resume=args.resume, quiet=args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        print(f"distilled {json.dumps(result['config'], sort_keys=True)} with {result['loss']['name']}: "
              f"val acc {result['val_accuracy']:.4f} -> {args.out}")
    return 0


def _find(args) -> int:
    from kdsearch.pipeline import find
    from kdsearch.run.options import FIND_OPTIONS

    options = {o.name: getattr(args, o.name) for o in FIND_OPTIONS}
    options["loss_options"] = _loss_options(options["loss_options"] or [])
    result = find(**options)
    print(result.report.to_text())
    return 0


def _worker(args) -> int:
    from kdsearch.pipeline import run_worker

    run_worker(args.run_dir, index=args.index, device=args.device, quiet=args.quiet, until_done=not args.until_idle,
               parent=args.parent)
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (its one line is printed already), --help or --version
        return exc.code if isinstance(exc.code, int) else 2
    handlers = {"find": _find, "worker": _worker, "report": _report, "export": _export, "distill": _distill}
    from kdsearch._util import configure_logging

    configure_logging(-1 if getattr(args, "quiet", False) else 1 if getattr(args, "verbose", False) else 0)
    try:
        code = handlers[args.command](args)
    except KdsearchError as exc:
        print(f"kdsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"kdsearch: {exc or 'interrupted; run the same command again to resume.'}", file=sys.stderr)
        return 130
    from kdsearch.training import close_distributed

    close_distributed()  # only after success: a failed rank must not wait in a collective for the others
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
