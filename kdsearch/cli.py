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


def _whole_number(minimum: int):
    """argparse type: an int of at least ``minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _whole_number(1), _whole_number(0)


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
    from kdsearch.cost import list_runtimes
    from kdsearch.data import LOADERS
    from kdsearch.distill import list_losses
    from kdsearch.export import FORMATS
    from kdsearch.proxies import list_proxies
    from kdsearch.search import sampler_names
    from kdsearch.training import RECIPE_CHOICES

    return {"data": " | ".join(LOADERS.names()), "losses": ", ".join(list_losses()), "proxies": ", ".join(list_proxies()),
            "samplers": sampler_names(), "formats": FORMATS.names(), "recipe": RECIPE_CHOICES,
            "runtimes": list_runtimes()}


def _teacher_and_data_options(p: argparse.ArgumentParser, names: dict, *, from_run: bool) -> None:
    run_default = " (default: the --from-run run's)" if from_run else ""
    p.add_argument("--teacher", required=not from_run, help="timm model name, package.module:callable, or a TorchScript/torch.export file" + run_default)
    p.add_argument("--teacher-weights", help="checkpoint for the teacher (state_dict, {'state_dict'|'model': …}, safetensors)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None if from_run else True,
                   help="do not fetch timm's pretrained teacher weights")
    p.add_argument("--teacher-epochs", type=_positive_int, help="epochs to prepare (fine-tune or train) the teacher when needed")
    p.add_argument("--data", default=None if from_run else "digits", help=f"{names['data']} | an ImageFolder directory" + run_default)
    p.add_argument("--data-root", help="folder for fashion-mnist IDX files or torchvision CIFAR downloads")
    p.add_argument("--input-size", type=_positive_int, help="resize images to this many pixels square (default: native ≤64 px, else 224)")
    p.add_argument("--train-samples", type=_positive_int, help="class-balanced subset of the training images")
    p.add_argument("--val-samples", type=_positive_int, help="class-balanced subset of the validation images")


def _find_parser(f: argparse.ArgumentParser, names: dict) -> None:
    _teacher_and_data_options(f, names, from_run=False)
    f.add_argument("--budget", required=True, help="latency (10ms, 500us), FLOPs (300MFLOPs), parameters (5Mparams), or a "
                   "factor of a network you ship: 0.8x:<timm name | candidate JSON | module:callable | model file>")
    f.add_argument("--space", help="search-space YAML or bundled name (default follows the input resolution)")
    f.add_argument(
        "--proxy", default="default",
        help=f"ranking proxy ({names['proxies']}), or several comma-separated (the first ranks); 'a+b' or '2*a+b' is a "
        "rank ensemble; 'default' is the proxy chosen on distilled ground truth (docs/benchmarks.md; today params)",
    )
    f.add_argument("--sampler", default="auto", choices=names["samplers"], help="Optuna sampler; auto = exhaustive when the space has at most --trials candidates, else constrained")
    f.add_argument("--trials", type=_positive_int, default=100, help="candidates to score")
    f.add_argument("--timeout", type=float, help="stop scoring after this many seconds")
    f.add_argument("--top-k", type=_positive_int, default=3, help="best candidates (by the proxy) within the budget to distil")
    f.add_argument("--front", type=_non_negative_int, default=4,
                   help="latency bands between the fastest candidate and the budget; the best of each is distilled too (0: off)")
    f.add_argument("--controls", type=_non_negative_int, default=1,
                   help="candidates within the budget drawn at random and distilled, to check the proxy's picks against (0: off)")
    f.add_argument("--select", default="proxy", choices=["proxy", "halving"],
                   help="how the students that get the full recipe are chosen: the proxy's --top-k, or successive "
                        "halving: the proxy's top --pool distilled briefly, the best 1/--eta kept at each rung, --top-k survivors")
    f.add_argument("--pool", type=_positive_int, default=27, help="with --select halving: candidates within the budget it starts from")
    f.add_argument("--eta", type=int, default=3, help="with --select halving: each rung keeps the best 1/eta (at least 2)")
    f.add_argument("--first-rung", type=_positive_int, default=1, help="with --select halving: epochs of the first rung")
    f.add_argument("--rung-design", default="restart", choices=["restart", "snapshot"],
                   help="with --select halving: each rung a short complete schedule, restarted at the next (restart), or "
                        "the full recipe's schedule stopped at each rung's end (snapshot)")
    f.add_argument("--rung-signal", default="accuracy", choices=["accuracy", "accuracy+proxy", "kd_loss", "extrapolated"],
                   help="with --select halving: what ranks the students at a rung's end (accuracy+proxy: the proxy "
                        "orders students whose accuracies tie within the validation noise)")
    f.add_argument("--subspaces", type=_positive_int, default=3,
                   help="with --proxy supernet: latency bands of the space, one supernet each (only bands holding candidates within the budget are trained)")
    f.add_argument("--supernet-epochs", type=_positive_int, default=5, help="with --proxy supernet: epochs of each band's supernet")
    f.add_argument("--supernet-anchors", default="latency", choices=["latency", "span", "uniform"],
                   help="with --proxy supernet: the subnets each training step runs besides 2 random ones: the band's "
                        "slowest and fastest (latency), its per-key largest and smallest configs (span), or none: 4 random (uniform)")
    f.add_argument("--warm-start", action="store_true", help="with --proxy supernet: start each student from its subnet's inherited weights")
    f.add_argument("--epochs", type=_positive_int, default=10, help="distillation epochs per student")
    f.add_argument("--batch-size", type=_positive_int, default=64, help="training batch size of the distilled students")
    f.add_argument("--loss", default="kd", help=f"distillation loss: {names['losses']} (ce = no KD)")
    f.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE", help="override a loss setting, e.g. temperature=2")
    f.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]: where latency is measured and training runs")
    f.add_argument("--latency-batch-size", type=_positive_int, default=1, help="batch size the latency budget is measured at")
    f.add_argument("--threads", type=_positive_int, default=1, help="CPU threads for latency measurement (pinned and recorded)")
    f.add_argument("--runtime", default="torch", choices=names["runtimes"],
                   help="the runtime latency is measured in (and exported for): eager torch, torchscript (trace + freeze), "
                        "compile (torch.compile), onnxruntime (CPU provider; CUDA provider on a GPU)")
    f.add_argument("--latency-model", default="auto", choices=["auto", "on", "off"],
                   help="screen candidates with a latency model fitted on this device (finalists are still timed); "
                        "auto: for spaces of 100,000+ candidates, or --runtime compile")
    f.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db for workers on several machines "
                                     "(password from PGPASSWORD or ~/.pgpass; default: SQLite in the run folder)")
    f.add_argument("--workers", type=_non_negative_int, default=0,
                   help="local worker processes to start beside find; they take trials and students from the run's storage")
    f.add_argument("--heartbeat", type=_positive_int, default=10, metavar="SECONDS",
                   help="workers beat this often; a dead worker's trial or student is retried 3 beats after its last one")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", help="run folder (default runs/<teacher>-<budget>-<time>); an existing one is resumed")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")


def _worker_parser(w: argparse.ArgumentParser) -> None:
    w.add_argument("run_dir", help="the run folder of 'kdsearch find' (shared with this machine); its storage is read from it")
    w.add_argument("--device", help="auto | cpu | cuda[:N] (default: the run's device)")
    w.add_argument("--index", type=_positive_int, help="this worker's number (its sampler's seed); default from host and process")
    w.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # find's local workers leave when find is gone
    w.add_argument("--until-idle", action="store_true",
                   help="leave once nothing is left to take, instead of waiting until the run is done")
    w.add_argument("-q", "--quiet", action="store_true", help="no log lines")


def _export_parser(e: argparse.ArgumentParser, names: dict) -> None:
    e.add_argument("run_dir")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the most accurate distilled student within budget (default)")
    which.add_argument("--trial", type=int, help="the student of this trial number")
    e.add_argument("--format", choices=names["formats"], help="default: the format of the run's --runtime "
                   "(onnx for onnxruntime, torchscript for torchscript, else safetensors)")
    e.add_argument("--out", help="output folder (default <run>/export)")


def _distill_parser(d: argparse.ArgumentParser, names: dict) -> None:
    choices = names["recipe"]
    _teacher_and_data_options(d, names, from_run=True)
    d.add_argument("--student", help="a timm model name or a candidate config as JSON")
    d.add_argument("--from-run", help="take the student config and, unless given here, every setting of the run (teacher, data, loss, recipe)")
    d.add_argument("--trial", type=int, help="with --from-run: the trial whose candidate to distil")
    d.add_argument("--loss", help=f"{names['losses']} (ce = no KD); default kd, or the --from-run run's")
    d.add_argument("--loss-opt", action="append", default=[], metavar="KEY=VALUE", help="override a loss setting, e.g. beta=8")
    # Recipe settings default to None: "not given" lets --from-run supply the run's value, else Recipe()'s.
    d.add_argument("--epochs", type=_positive_int, help="default 10, or the run's")
    d.add_argument("--batch-size", type=_positive_int, help="training batch size, per process under torchrun (default 64, or the run's)")
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
    d.add_argument("-q", "--quiet", action="store_true")


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

    result = find(
        teacher=args.teacher, budget=args.budget, data=args.data, data_root=args.data_root, input_size=args.input_size,
        train_samples=args.train_samples, val_samples=args.val_samples, space=args.space, out=args.out,
        teacher_weights=args.teacher_weights, pretrained=args.pretrained, teacher_epochs=args.teacher_epochs,
        trials=args.trials, timeout=args.timeout, top_k=args.top_k, front=args.front, controls=args.controls, subspaces=args.subspaces,
        supernet_epochs=args.supernet_epochs, supernet_anchors=args.supernet_anchors, warm_start=args.warm_start, proxy=args.proxy, sampler=args.sampler,
        device=args.device, latency_batch_size=args.latency_batch_size, threads=args.threads, runtime=args.runtime,
        latency_model=args.latency_model, epochs=args.epochs,
        batch_size=args.batch_size, loss=args.loss, loss_options=_loss_options(args.loss_opt), storage=args.storage,
        workers=args.workers, heartbeat_s=args.heartbeat, select=args.select, pool=args.pool, eta=args.eta,
        first_rung=args.first_rung, rung_design=args.rung_design, rung_signal=args.rung_signal, seed=args.seed,
        quiet=args.quiet,
    )
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
