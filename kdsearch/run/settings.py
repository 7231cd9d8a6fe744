"""The settings of a run: built and validated once (from the CLI or the API), frozen, stored in config.yaml.

Every stage reads what it needs from :class:`RunSettings`; nothing downstream re-parses a budget, a
proxy list or a loss. ``identity()`` is what a run folder refuses to resume under different values of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass, replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kdsearch._util import file_sha256, resolve_device, stable_hash
from kdsearch._version import __version__
from kdsearch.cost import LATENCY_FINAL, LATENCY_MODEL_CHOICES, LATENCY_SEARCH, Budget, get_runtime, parse_budget
from kdsearch.data import DataSpec
from kdsearch.distill import create_loss
from kdsearch.exceptions import KdsearchError
from kdsearch.proxies import needs_supernet, parse_proxies
from kdsearch.run.options import BY_NAME, RECORDED, TARGET_FACTOR, find_keywords, setting_fields
from kdsearch.search import check_sampler
from kdsearch.search.storage import check_storage, without_password
from kdsearch.spaces import SearchSpace
from kdsearch.spaces.loading import load_spaces
from kdsearch.spaces.union import UnionSpace, is_union
from kdsearch.training import STUDENT_RECIPE, Recipe

IDENTITY_KEYS = (
    "teacher", "teacher_weights_sha", "data", "space", "space_sha", "budget", "proxies", "device", "latency_batch_size",
    "threads", "seed", "loss", "supernet", "runtime", "latency_model", "selection",
)
# Keys added after runs existed: a value equal to its default is left out of the identity, so older run folders
# (and their storages' identity hashes) still resume.
IDENTITY_DEFAULTS = {"runtime": "torch", "latency_model": "auto", "selection": {"select": "proxy"}}


# The plain options' fields (name, default), generated from their one declaration in kdsearch.run.options.
_OptionSettings = make_dataclass("_OptionSettings", setting_fields(), frozen=True, kw_only=True)


@dataclass(frozen=True, kw_only=True)
class RunSettings(_OptionSettings):
    """Every option with ``setting=`` in FIND_OPTIONS is a field of this class (trials, top_k, epochs, device, …);
    the fields below are those built from several options or checked into another shape."""

    teacher: str
    budget: Budget
    data: DataSpec = field(default_factory=DataSpec)
    space: SearchSpace | None = None  # None until the data tells which bundled space is the default
    out: Path = Path("runs/run")
    teacher_weights_sha: str | None = None
    proxies: tuple[str, ...] = ("params",)
    loss: dict = field(default_factory=lambda: {"name": "kd"})  # name + every setting, typed
    storage: str | None = None  # None: SQLite in the run folder (RunFolder.storage_url); config.yaml keeps no password
    # With a supernet proxy: {"subspaces": K, "epochs": E, "warm_start": bool[, "anchors": other than "latency"]}
    supernet: dict | None = None
    # How the students that get the full recipe are chosen: {"select": "proxy"} (the proxy's top-k) or
    # {"select": "halving", "pool", "eta", "first_rung", "rung_design", "rung_signal"} (kdsearch.pipeline.halving)
    selection: dict = field(default_factory=lambda: {"select": "proxy"})
    # --select auto (the default): why it fell back to the proxy, "" when it chose halving; None: chosen by the user.
    # A resumed run keeps the selection it was started with when the user did not choose (kdsearch.pipeline.find).
    auto_selection: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, teacher: str = "resnet101", budget: str = "10ms", **options) -> RunSettings:
        """Validate every input before any work: a mistake costs the user one line, not a half-made run.

        ``options``: the keywords of :data:`kdsearch.run.options.FIND_OPTIONS` (``kdsearch find``'s flags, with their
        defaults); an unknown keyword is refused."""
        o = SimpleNamespace(**find_keywords({"teacher": teacher, "budget": budget, **options}))
        parsed_budget = parse_budget(o.budget)
        proxies = tuple(parse_proxies(o.proxy))
        _check_counts(o)
        target_epochs = check_target_epochs(o.target_epochs, o.epochs)
        select, auto_selection = o.select, None
        if select == "auto":  # decided here, once: halving, or the proxy's top-k with the reason it cannot run
            auto_selection = auto_fallback(pool=o.pool, top_k=o.top_k, epochs=o.epochs, target_epochs=target_epochs) or ""
            select = "proxy" if auto_selection else "halving"
        selection = check_selection(select, pool=o.pool, eta=o.eta, first_rung=o.first_rung, rung_design=o.rung_design,
                                    rung_signal=o.rung_signal, top_k=o.top_k, epochs=o.epochs, finish=o.finish)
        space_obj = load_spaces(o.space) if o.space else None
        supernet = _supernet_settings(o, proxies, space_obj)
        loss_config = create_loss(o.loss, **(o.loss_options or {})).config()
        torch_device = resolve_device(o.device)
        get_runtime(o.runtime).check(torch_device)  # not installed here: one line now, not after the teacher
        if o.latency_model not in LATENCY_MODEL_CHOICES:
            raise KdsearchError(f"--latency-model must be one of {', '.join(LATENCY_MODEL_CHOICES)} (got {o.latency_model!r}).")
        run_dir = Path(o.out) if o.out else Path("runs") / f"{Path(str(o.teacher)).stem}-{parsed_budget.text}-{datetime.now():%Y%m%d-%H%M%S}"
        weights = o.teacher_weights
        plain = {name: getattr(o, name) for name, _, _ in setting_fields()}
        return cls(**{
            **plain, "sampler": check_sampler(o.sampler), "device": str(torch_device), "runtime": get_runtime(o.runtime).name,
            "target_epochs": target_epochs,
            "teacher": o.teacher, "budget": parsed_budget, "space": space_obj, "out": run_dir,
            "teacher_weights_sha": file_sha256(weights) if weights and Path(weights).is_file() else None,
            "proxies": proxies, "loss": loss_config, "storage": check_storage(o.storage), "supernet": supernet,
            "selection": selection, "auto_selection": auto_selection,
            "data": DataSpec(data=o.data, data_root=o.data_root, input_size=o.input_size, train_samples=o.train_samples,
                             val_samples=o.val_samples, seed=o.seed),
        })

    def with_space(self, space: SearchSpace) -> RunSettings:
        return replace(self, space=space)

    def with_reference_latency(self, reference_ms: float) -> RunSettings:
        """A relative budget ('0.8x:<network>') made absolute from the reference network's measured latency."""
        return replace(self, budget=self.budget.with_reference(reference_ms))

    # ------------------------------------------------------------------ what stages read
    @property
    def ranking_proxy(self) -> str:
        return self.proxies[0]

    @property
    def loss_name(self) -> str:
        return self.loss["name"]

    @property
    def loss_options(self) -> dict:
        return {k: v for k, v in self.loss.items() if k != "name"}

    def recipe(self, family: str | None = None) -> Recipe:
        """The distillation recipe every student of the run is trained with; for a ``family`` with optimiser settings
        of its own (a ViT's AdamW: ``kdsearch.spaces.families.family_recipe``), with those."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, **_optimiser(family))

    def supernet_recipe(self, family: str | None = None) -> Recipe:
        """The supernets' recipe: the students' (batch size, optimiser, seed) for ``supernet["epochs"]`` epochs."""
        return Recipe(epochs=self.supernet["epochs"], batch_size=self.batch_size, seed=self.seed, **_optimiser(family))

    def latency(self, stage: str) -> dict[str, Any]:
        """measure_latency settings for 'search' (screening) or 'final' (finalists, teacher)."""
        stats = LATENCY_SEARCH if stage == "search" else LATENCY_FINAL
        return {"batch_size": self.latency_batch_size, "threads": self.threads, "runtime": self.runtime, **stats}

    # ------------------------------------------------------------------ config.yaml
    def identity(self) -> dict[str, Any]:
        config = self.to_config()
        identity = {key: config.get(key) for key in IDENTITY_KEYS}
        return {k: v for k, v in identity.items() if k not in IDENTITY_DEFAULTS or v != IDENTITY_DEFAULTS[k]}

    def to_config(self) -> dict[str, Any]:
        space = self.space
        space_record = _space_record(space) if space else None
        return {
            "kdsearch_version": __version__, "teacher": self.teacher, **{name: getattr(self, name) for name in RECORDED},
            "teacher_weights_sha": self.teacher_weights_sha, "data": self.data.to_dict(), "space": space.name if space else None,
            "space_sha": stable_hash({k: v for k, v in space_record.items() if k != "description"}) if space else None,
            "space_path": space.path if space else None, "space_record": space_record, "budget": self.budget.text,
            "budget_reference_ms": self.budget.limit / self.budget.factor if self.budget.factor and self.budget.resolved else None,
            "proxies": list(self.proxies), "storage": without_password(self.storage), "loss": dict(self.loss),
            "recipe": self.recipe().to_dict(), "supernet": self.supernet, "selection": dict(self.selection),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], out: str | Path) -> RunSettings:
        """The settings a run folder was created with (no re-validation: the device may not exist on this machine)."""
        record = config.get("space_record")
        space = _space_from_record(record, config.get("space_path")) if record else None
        # an option recorded after runs existed reads as its default; bands and controls came later still: off
        recorded = {name: config.get(name, BY_NAME[name].default) for name in RECORDED}
        return cls(**{
            **recorded, "front": config.get("front", 0), "controls": config.get("controls", 0),
            "teacher": config["teacher"], "budget": _budget(config), "data": DataSpec(**config["data"]), "space": space,
            "out": Path(out), "teacher_weights_sha": config.get("teacher_weights_sha"), "proxies": tuple(config["proxies"]),
            "loss": dict(config["loss"]), "storage": config["storage"], "supernet": config.get("supernet"),
            "selection": dict(config.get("selection") or {"select": "proxy"}),
        })


def _check_counts(o: SimpleNamespace) -> None:
    for name, value in (("trials", o.trials), ("top_k", o.top_k), ("epochs", o.epochs), ("batch_size", o.batch_size),
                        ("latency_batch_size", o.latency_batch_size), ("threads", o.threads), ("teacher_epochs", o.teacher_epochs),
                        ("subspaces", o.subspaces), ("supernet_epochs", o.supernet_epochs), ("heartbeat", o.heartbeat_s)):
        if value is not None and value < 1:
            raise KdsearchError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
    for name, value in (("front", o.front), ("controls", o.controls), ("workers", o.workers)):
        if value < 0:
            raise KdsearchError(f"--{name} must be 0 or more (got {value}).")


def _optimiser(family: str | None) -> dict:
    from kdsearch.spaces.families import family_recipe

    return {**STUDENT_RECIPE, **(family_recipe(family) if family else {})}


def _space_record(space) -> dict:
    if is_union(space):
        return {"name": space.name, "parts": [_space_record(p) | {"path": p.path} for p in space.parts],
                **({"label": space.label} if space.label else {})}
    return {"name": space.name, "family": space.family, "choices": space.choices, "fixed": space.fixed,
            "description": space.description, "resolution": list(space.resolution)}


def _space_from_record(record: dict, path: str | None):
    if "parts" in record:
        return UnionSpace(tuple(_space_from_record({k: v for k, v in part.items() if k != "path"}, part.get("path"))
                                for part in record["parts"]), label=record.get("label"))
    return SearchSpace(path=path, **{**record, "resolution": tuple(record["resolution"])})


def _supernet_settings(o: SimpleNamespace, proxies: tuple[str, ...], space: SearchSpace | None) -> dict | None:
    """With a supernet proxy: {"subspaces", "epochs", "warm_start"[, "anchors" other than latency]}, checked."""
    from kdsearch.supernet.bands import ANCHORS  # the supernet stage loads only for runs that use it

    if o.supernet_anchors not in ANCHORS:
        raise KdsearchError(f"--supernet-anchors must be one of {', '.join(ANCHORS)} (got {o.supernet_anchors!r}).")
    if not needs_supernet(list(proxies)):
        if o.warm_start:
            raise KdsearchError("--warm-start starts each student from its subnet's inherited weights; it needs a supernet "
                                "proxy (--proxy supernet).")
        return None
    supernet = {"subspaces": o.subspaces, "epochs": o.supernet_epochs, "warm_start": o.warm_start}
    if o.supernet_anchors != "latency":  # absent = the default, so older runs still resume
        supernet["anchors"] = o.supernet_anchors
    if o.supernet_objective != "auto":  # (likewise)
        supernet["objective"] = o.supernet_objective
    if is_union(space) and len(space.families) > 1:
        raise KdsearchError(f"A supernet proxy shares weights within one family; --space {space.name} mixes "
                            f"{', '.join(space.families)}: search each family with --proxy supernet on its own, or rank the "
                            "union with another --proxy.")
    if space is not None:
        from kdsearch.spaces.families import sharing_rule

        sharing_rule(space.family)  # a space without a weight-sharing rule fails now, not after the teacher
    return supernet


SELECT_CHOICES = ("auto", "halving", "proxy")


def check_target_epochs(target: Any, epochs: int) -> int:
    """``--target-epochs``: a whole number not below ``--epochs``; by default TARGET_FACTOR x ``--epochs``."""
    if target is None:
        return max(epochs, math.ceil(TARGET_FACTOR * epochs))
    if isinstance(target, bool) or not isinstance(target, int):
        raise KdsearchError(f"--target-epochs must be a whole number of epochs (got {target!r}); give the epochs you will "
                            "distil the shipped student for, e.g. --target-epochs 30.")
    if target < epochs:
        raise KdsearchError(f"--target-epochs {target} is shorter than --epochs {epochs}: it is the recipe you will ship "
                            f"the student with, which find's own distillations cannot exceed; give --target-epochs {epochs} "
                            "or more, or lower --epochs.")
    return target


# --select auto runs successive halving only for a target recipe at most this many times --epochs: against a ground
# truth as long as find's own recipe its pick beat the proxy's; against the long recipe it did not
# (benchmarks/teacher_decides.py, docs/benchmarks.md#the-recipe-you-ship-with).
HALVING_TARGET_RATIO = 1.0


def auto_fallback(*, pool: int, top_k: int, epochs: int, target_epochs: int | None = None) -> str | None:
    """Why ``--select auto`` falls back to the proxy's top-k (None: it runs successive halving)."""
    if epochs < 2:
        return "--epochs 1 leaves no shorter distillation to rank the pool by"
    if top_k >= pool:
        return f"--top-k {top_k} would keep the whole --pool {pool}"
    if target_epochs is not None and target_epochs > HALVING_TARGET_RATIO * epochs:
        return (f"the student is to be distilled for --target-epochs {target_epochs}, and against recipes longer than "
                "find's own the short rungs picked worse than the proxy (docs/benchmarks.md); --target-epochs "
                f"{epochs} or --select halving runs it")
    return None


def check_selection(select: str, *, pool: int, eta: int, first_rung: int, rung_design: str, rung_signal: str, top_k: int,
                    epochs: int, finish: str = "epochs") -> dict:
    """The selection settings of ``select`` (proxy or halving; ``RunSettings.create`` resolves auto first), checked:
    one sentence naming the option otherwise."""
    from kdsearch.distill.halving import FINISH_CHOICES, RUNG_DESIGNS, RUNG_SIGNALS

    if select not in SELECT_CHOICES:
        raise KdsearchError(f"--select must be one of {', '.join(SELECT_CHOICES)} (got {select!r}).")
    if select == "proxy":
        return {"select": "proxy"}
    if eta < 2:
        raise KdsearchError(f"--eta must be at least 2: each rung keeps the best 1/eta of the one before (got {eta}).")
    if pool < top_k:
        raise KdsearchError(f"--pool {pool} is smaller than --top-k {top_k}: halving must start with at least as many "
                            "students as it keeps; raise --pool or lower --top-k.")
    if epochs < 2:
        raise KdsearchError("--select halving needs --epochs 2 or more: its rungs are shorter distillations than the "
                            "full recipe; raise --epochs or use --select proxy.")
    if not 1 <= first_rung < epochs:
        raise KdsearchError(f"--first-rung must lie between 1 and --epochs - 1 = {epochs - 1} (got {first_rung}).")
    if rung_design not in RUNG_DESIGNS:
        raise KdsearchError(f"--rung-design must be one of {', '.join(RUNG_DESIGNS)} (got {rung_design!r}).")
    if rung_signal not in RUNG_SIGNALS:
        raise KdsearchError(f"--rung-signal must be one of {', '.join(RUNG_SIGNALS)} (got {rung_signal!r}).")
    if finish not in FINISH_CHOICES:
        raise KdsearchError(f"--finish must be one of {', '.join(FINISH_CHOICES)} (got {finish!r}).")
    selection = {"select": "halving", "pool": pool, "eta": eta, "first_rung": first_rung, "rung_design": rung_design,
                 "rung_signal": rung_signal}
    if finish != "epochs":  # absent = epochs: the runs from before --finish keep their record (and their identity)
        selection["finish"] = finish
    return selection


def _budget(config: dict[str, Any]) -> Budget:
    """The run's budget; a relative one with the reference latency find measured (workers and reports use it)."""
    budget = parse_budget(config["budget"])
    reference = config.get("budget_reference_ms")
    return budget.with_reference(reference) if budget.factor is not None and reference else budget


__all__ = ["IDENTITY_DEFAULTS", "IDENTITY_KEYS", "LATENCY_FINAL", "LATENCY_SEARCH", "RunSettings"]
