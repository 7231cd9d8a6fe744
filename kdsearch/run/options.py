"""The options of a run, declared once: ``kdsearch find``'s flags, the keywords of ``kdsearch.find`` /
``RunSettings.create`` and their defaults and help all come from :data:`FIND_OPTIONS`.

An option with ``setting="record"`` is also a field of ``RunSettings`` of the same name and default, written to
config.yaml and read back on resume (``"run"``: a field, not recorded); the class is generated from this table
(:func:`setting_fields`). Adding such an option is one :class:`Option` here plus its use; an option whose value is
checked or reshaped (a budget, a loss) is mapped into its settings field in ``RunSettings.create``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdsearch._util import suggest
from kdsearch.distill.halving import FINISH_CHOICES, RUNG_SIGNALS
from kdsearch.exceptions import KdsearchError
from kdsearch.search.storage import HEARTBEAT_S


def whole_number(minimum: int) -> Callable[[str], int]:
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


POSITIVE, NON_NEGATIVE = whole_number(1), whole_number(0)


@dataclass(frozen=True)
class Option:
    name: str  # the keyword of the API (and the argparse dest)
    default: Any = None
    help: str = ""
    type: Callable[[str], Any] | None = None
    choices: Callable[[], list[str]] | tuple[str, ...] | None = None  # a callable: read from a registry when asked
    flags: tuple[str, ...] = ()  # default: --name-with-dashes
    action: str | None = None  # store_true, store_false, append
    metavar: str | None = None
    required: bool = False  # on the command line (the API has defaults for all)
    setting: str | None = None  # "record": a RunSettings field kept in config.yaml; "run": a field only; None: mapped by hand

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.name.replace('_', '-')}",)

    def choice_list(self) -> list[str] | None:
        return list(self.choices()) if callable(self.choices) else (list(self.choices) if self.choices else None)

    def add_to(self, parser: argparse.ArgumentParser, **override) -> None:
        kwargs: dict[str, Any] = {"dest": self.name, "default": self.default, "help": self.help}
        if self.action:
            kwargs["action"] = self.action
            if self.action == "append":
                kwargs["default"] = []
        else:
            kwargs.update(type=self.type, choices=self.choice_list())
        if self.metavar:
            kwargs["metavar"] = self.metavar
        if self.required:
            kwargs["required"] = True
        kwargs.update(override)
        parser.add_argument(*self.cli_flags, **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def _names(kind: str) -> Callable[[], list[str]]:
    """The names a registry holds, read when --help or a parse needs them (imports stay lazy)."""
    def names() -> list[str]:
        if kind == "data":
            from kdsearch.data import LOADERS

            return LOADERS.names()
        if kind == "samplers":
            from kdsearch.search import sampler_names

            return sampler_names()
        if kind == "runtimes":
            from kdsearch.cost import list_runtimes

            return list_runtimes()
        raise KeyError(kind)

    return names


def _listed(kind: str) -> str:
    """For help text: the registry's names, joined."""
    if kind == "proxies":
        from kdsearch.proxies import list_proxies

        return ", ".join(list_proxies())
    if kind == "losses":
        from kdsearch.distill import list_losses

        return ", ".join(list_losses())
    return " | ".join(_names(kind)())


HALVING = "with --select halving: "
# Users distil the student they ship for longer than find does; without --target-epochs find assumes this many times
# --epochs (the long recipe of benchmarks/teacher_decides.py: 15 epochs against 6).
TARGET_FACTOR = 2.5
SUPERNET = "with --proxy supernet: "

# The teacher and the data: shared with `kdsearch distill` (there every default is "the --from-run run's").
TEACHER_AND_DATA = (
    Option("teacher", "resnet101", "timm model name, a candidate config (.json file or JSON text), package.module:callable, "
           "or a TorchScript/torch.export file", required=True),
    Option("teacher_weights", None, "checkpoint for the teacher (state_dict, {'state_dict'|'model': …}, safetensors)", setting="record"),
    Option("pretrained", True, "do not fetch timm's pretrained teacher weights", flags=("--no-pretrained",), action="store_false", setting="record"),
    Option("teacher_epochs", None, "epochs to prepare (fine-tune or train) the teacher when needed", POSITIVE, setting="record"),
    Option("data", "digits", "a data set name or an ImageFolder directory"),
    Option("data_root", None, "folder for fashion-mnist IDX files or torchvision CIFAR downloads"),
    Option("input_size", None, "resize images to this many pixels square (default: native ≤64 px, else 224)", POSITIVE),
    Option("train_samples", None, "class-balanced subset of the training images", POSITIVE),
    Option("val_samples", None, "class-balanced subset of the validation images", POSITIVE),
)

FIND_OPTIONS: tuple[Option, ...] = (
    *TEACHER_AND_DATA,
    Option("budget", "10ms", "latency (10ms, 500us), FLOPs (300MFLOPs), parameters (5Mparams), or a factor of a network you "
           "ship: 0.8x:<timm name | candidate JSON | module:callable | model file>", required=True),
    Option("space", None, "search-space YAML or bundled name (default follows the input resolution)"),
    Option("proxy", "default", "ranking proxy, or several comma-separated (the first ranks); 'a+b' or '2*a+b' is a rank "
           "ensemble; 'default' is the proxy chosen on distilled ground truth (docs/benchmarks.md; today params)"),
    Option("sampler", "auto", "Optuna sampler; auto = exhaustive when the space has at most --trials candidates, else "
           "constrained", choices=_names("samplers"), setting="record"),
    Option("trials", 100, "candidates to score", POSITIVE, setting="record"),
    Option("timeout", None, "stop scoring after this many seconds", float, setting="record"),
    Option("top_k", 3, "best candidates (by the proxy) within the budget to distil", POSITIVE, setting="record"),
    Option("front", 4, "latency bands between the fastest candidate and the budget; the best of each is distilled too "
           "(0: off)", NON_NEGATIVE, setting="record"),
    Option("controls", 1, "candidates within the budget drawn at random and distilled, to check the proxy's picks "
           "against (0: off)", NON_NEGATIVE, setting="record"),
    Option("select", "auto", "how the students that get the full recipe are chosen: successive halving (the proxy's top "
           "--pool distilled briefly from the teacher, the best 1/--eta kept at each rung, --top-k survivors), or the "
           "proxy's --top-k; auto: halving when --target-epochs is --epochs, else the proxy (what the long-recipe "
           "measurements support), and the proxy where halving cannot run (--epochs 1, or --top-k not below --pool)",
           choices=("auto", "halving", "proxy")),
    Option("pool", 27, HALVING + "candidates within the budget it starts from", POSITIVE),
    Option("eta", 3, HALVING + "each rung keeps the best 1/eta (at least 2)", int),
    Option("first_rung", 1, HALVING + "epochs of the first rung", POSITIVE),
    Option("rung_design", "restart", HALVING + "each rung a short complete schedule, restarted at the next (restart), or "
           "the full recipe's schedule stopped at each rung's end (snapshot)", choices=("restart", "snapshot")),
    Option("rung_signal", "accuracy", HALVING + "what ranks the students at a rung's end (accuracy+proxy: the proxy "
           "orders students whose accuracies tie within the validation noise; rank_blend: the mean of the accuracy's and "
           "the proxy's ranks; extrapolated: the curve extended to --target-epochs)",
           choices=RUNG_SIGNALS),
    Option("finish", "epochs", HALVING + "where the survivors are distilled to: --epochs, or --target-epochs (their "
           "final order made at the recipe you ship; the top picks are then the students you ship)", choices=FINISH_CHOICES),
    Option("subspaces", 3, SUPERNET + "latency bands of the space, one supernet each (only bands holding candidates "
           "within the budget are trained)", POSITIVE),
    Option("supernet_epochs", 5, SUPERNET + "epochs of each band's supernet", POSITIVE),
    Option("supernet_anchors", "latency", SUPERNET + "the subnets each training step runs besides 2 random ones: the "
           "band's slowest and fastest (latency), its per-key largest and smallest configs (span), or none: 4 random "
           "(uniform)", choices=("latency", "span", "uniform")),
    Option("supernet_objective", "auto", SUPERNET + "what the subnets learn: the teacher's logits (kd), also its "
           "last layer's self-attention relations (relations+kd), or the relations alone, AutoDistil's task-agnostic "
           "SuperLM, then one epoch of logit KD shared by all subnets (relations); auto: relations+kd for a transformer "
           "teacher and transformer students, else kd", choices=("auto", "kd", "relations+kd", "relations")),
    Option("warm_start", False, SUPERNET + "start each student from its subnet's inherited weights", action="store_true"),
    Option("epochs", 10, "distillation epochs per student", POSITIVE, setting="record"),
    Option("target_epochs", None, "the epochs you will distil the shipped student for: the selection is made for that "
           f"recipe (default: {TARGET_FACTOR:g} x --epochs, rounded up; at least --epochs)",
           POSITIVE, setting="record"),
    Option("batch_size", 64, "training batch size of the distilled students", POSITIVE, setting="record"),
    Option("loss", "kd", "distillation loss (ce = no KD)"),
    Option("loss_options", None, "override a loss setting, e.g. temperature=2", flags=("--loss-opt",), action="append",
           metavar="KEY=VALUE"),
    Option("device", "auto", "auto | cpu | cuda[:N]: where latency is measured and training runs", setting="record"),
    Option("latency_batch_size", 1, "batch size the latency budget is measured at", POSITIVE, setting="record"),
    Option("threads", 1, "CPU threads for latency measurement (pinned and recorded)", POSITIVE, setting="record"),
    Option("runtime", "torch", "the runtime latency is measured in (and exported for): eager torch, torchscript (trace + "
           "freeze), compile (torch.compile), onnxruntime (CPU provider; CUDA provider on a GPU)", choices=_names("runtimes"), setting="record"),
    Option("latency_model", "auto", "screen candidates with a latency model fitted on this device (finalists are still "
           "timed); auto: for spaces of 100,000+ candidates, or --runtime compile", choices=("auto", "on", "off"), setting="record"),
    Option("storage", None, "Optuna storage URL, e.g. postgresql://user@host/db for workers on several machines "
           "(password from PGPASSWORD or ~/.pgpass; default: SQLite in the run folder)"),
    Option("workers", 0, "local worker processes to start beside find; they take trials and students from the run's "
           "storage", NON_NEGATIVE, setting="run"),
    Option("heartbeat_s", HEARTBEAT_S, "workers beat this often; a dead worker's trial or student is retried 3 beats after its "
           "last one", POSITIVE, flags=("--heartbeat",), metavar="SECONDS", setting="record"),
    Option("seed", 0, "seed of the split, the sampler and training", int, setting="record"),
    Option("out", None, "run folder (default runs/<teacher>-<budget>-<time>); an existing one is resumed"),
    Option("quiet", False, "no progress bars or log lines", flags=("-q", "--quiet"), action="store_true", setting="run"),
)
BY_NAME = {o.name: o for o in FIND_OPTIONS}
RECORDED = tuple(o.name for o in FIND_OPTIONS if o.setting == "record")  # fields config.yaml keeps


def setting_fields() -> list[tuple[str, Any, Any]]:
    """(name, type, field) of every option that is a RunSettings field of its own name (``make_dataclass``'s form)."""
    from dataclasses import field

    return [(o.name, Any, field(default=o.default)) for o in FIND_OPTIONS if o.setting]
HELP_LISTS = {"proxy": "proxies", "loss": "losses", "data": "data"}  # help text that lists a registry's names


def add_find_options(parser: argparse.ArgumentParser) -> None:
    for option in FIND_OPTIONS:
        extra = {}
        if option.name in HELP_LISTS:
            extra["help"] = f"{option.help}; names: {_listed(HELP_LISTS[option.name])}"
        option.add_to(parser, **extra)


def find_keywords(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (the API's keywords) completed with every default; an unknown keyword is one line naming it."""
    for name in options:
        if name not in BY_NAME:
            raise KdsearchError(f"find has no option {name!r};{suggest(name, list(BY_NAME))} see kdsearch find --help.")
    return {name: options.get(name, option.default) for name, option in BY_NAME.items()}


__all__ = ["FIND_OPTIONS", "NON_NEGATIVE", "POSITIVE", "RECORDED", "setting_fields", "TARGET_FACTOR", "TEACHER_AND_DATA", "Option", "add_find_options", "find_keywords",
           "whole_number"]
