"""Weight-shared supernets that rank candidates with the teacher's knowledge (AutoDistil-style subspaces).

    ranker = prepare_supernets(space, task, teacher_model, bands=3, limit_ms=2.0, recipe=Recipe(epochs=5))
    ranker.evaluate(config, latency_ms)   # {"accuracy": ..., "kd_loss": ..., "band": ...}

The space is cut into K bands by latency measured on the device (``bands``) — or, where the space declares its
subspaces (AutoDistil's hand partition: a YAML's ``subspaces``, or spaces of one family listed together), into
those; each band that holds candidates
within the limit gets a supernet (``weights``), distilled from the teacher with the sandwich rule (``train``) on
the training images minus a seeded hold-out slice; a candidate is scored by its subnet with inherited weights,
BatchNorm recalibrated, on that slice — never on the user's validation set. Everything is cached by content
hash (teacher, data, space, bands, recipe), so a second ``find`` with the same inputs trains nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from kdsearch._util import atomic_write_json, cache_dir, stable_hash
from kdsearch.cost import LATENCY_SEARCH
from kdsearch.data import Task
from kdsearch.data.sources import balanced_indices
from kdsearch.exceptions import SpaceError
from kdsearch.similarity import kl_div_t
from kdsearch.spaces import SearchSpace, create_model
from kdsearch.spaces.families import sharing_rule
from kdsearch.spaces.union import UnionSpace, is_union
from kdsearch.supernet.bands import BandPool, LatencyBands, Subspaces, measure_bands
from kdsearch.supernet.train import WEIGHTS_FILE, SandwichRule, calibration_batches, train_band
from kdsearch.supernet.weights import Supernet, recalibrate
from kdsearch.taps import as_logits
from kdsearch.teacher.outputs import teacher_outputs, weights_sha
from kdsearch.training import STUDENT_RECIPE, Recipe, memory_format_for

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# The supernet's own recipe unless the caller gives one: short (it is trained once per band) and the same SGD
# as find's students.
DEFAULT_RECIPE = {"epochs": 5, "batch_size": 64, **STUDENT_RECIPE}


def carve_holdout(task: Task, fraction: float = 0.1, max_size: int = 500, seed: int = 0) -> Task:
    """The task with a seeded, class-balanced slice of its *training* images as its validation split (the supernet
    is scored there; the user's validation set stays unseen by the ranking)."""
    size = max(task.num_classes, min(max_size, int(len(task.train_labels) * fraction)))
    held = balanced_indices(task.train_labels.numpy(), size, seed)
    keep = torch.ones(len(task.train_labels), dtype=torch.bool)
    keep[held] = False
    return dataclasses.replace(
        task, train_images=task.train_images[keep], train_labels=task.train_labels[keep],
        val_images=task.train_images[held], val_labels=task.train_labels[held], _device_copies={},
        description=f"{task.description}; supernet hold-out: {size} training images",
    )


@dataclass
class SupernetRanker:
    """Scores candidates with inherited weights: accuracy and KD loss to the teacher on the hold-out slice."""

    bands: LatencyBands | Subspaces
    supernets: dict[int, Supernet]  # trained bands only
    task: Task  # training images minus the hold-out slice (its validation split)
    teacher_logits: torch.Tensor  # the teacher's logits on the hold-out slice
    device: torch.device
    temperature: float = 4.0
    histories: dict[int, list[dict]] = field(default_factory=dict)
    folder: Path | None = None
    weights: dict[int, Path] = field(default_factory=dict)  # each trained band's cached weights
    # scoring: hold-out batch size and memory format ("auto" = the trainer's rule); benchmarks/supernet_scoring.py
    eval_batch_size: int = 128
    channels_last: str = "auto"
    _calibration: list[torch.Tensor] | None = None

    def band_for(self, config: dict, latency_ms: float) -> int | None:
        """The candidate's band (its subspace, or its latency's band); a latency band left untrained (beyond the
        budget) is scored by the nearest trained one, whose supernet spans the space; an untrained subspace (its
        smallest member over the budget) has none that holds the candidate: None."""
        band = self.bands.locate(config, latency_ms)
        if isinstance(self.bands, Subspaces):
            return band if band in self.supernets else None
        return min(self.supernets, key=lambda b: (abs(b - band), b))

    @torch.no_grad()
    def evaluate(self, config: dict, latency_ms: float) -> dict[str, Any]:
        band = self.band_for(config, latency_ms)
        labels = self.task.val_labels.to(self.device)
        if band is None:  # a subspace wholly over the budget: scored as a model that knows nothing (uniform logits)
            logits = torch.zeros_like(self.teacher_logits)
            return {"accuracy": float((labels == 0).float().mean()),
                    "kd_loss": float(kl_div_t(logits, self.teacher_logits, self.temperature)), "band": None}
        model = self.subnet(config, latency_ms)
        fmt = self._format()
        logits = torch.cat([as_logits(model(x.contiguous(memory_format=fmt)))
                            for x, _ in self.task.batches("val", self.eval_batch_size, device=self.device)])
        return {"accuracy": float((logits.argmax(1) == labels).float().mean()),
                "kd_loss": float(kl_div_t(logits.float(), self.teacher_logits, self.temperature)), "band": band}

    def subnet(self, config: dict, latency_ms: float) -> nn.Module:
        """The candidate with inherited weights, BatchNorm recalibrated (a warm start for its distillation)."""
        fmt = self._format()
        if self._calibration is None:
            self._calibration = [x.contiguous(memory_format=fmt) for x in calibration_batches(self.task, self.device)]
        band = self.band_for(config, latency_ms)
        if band is None:
            raise SpaceError(f"Candidate {config} lies in a subspace no member of which is within the budget, so it has "
                             "no trained supernet to inherit weights from; warm-start only candidates within the budget.")
        model = self.supernets[band].extract(config).to(memory_format=fmt)
        return recalibrate(model, self._calibration)

    def _format(self) -> torch.memory_format:
        return memory_format_for(Recipe(channels_last=self.channels_last), self.device, self.task.input_shape)

    def weights_files(self) -> dict[int, Path]:
        """Each trained band's cached weights (the run folder links them)."""
        return self.weights or {band: self.folder / f"band{band}" / WEIGHTS_FILE for band in self.supernets}

    def record(self) -> dict:
        """What a run folder keeps of the supernets: the bands, which were trained, the cache, the hold-out size."""
        return {**self.bands.to_dict(), "trained": sorted(self.supernets), "cache": str(self.folder),
                "holdout_images": len(self.task.val_labels)}


def prepare_supernets(
    space: SearchSpace, task: Task, teacher: nn.Module, *, bands: int = 3, limit_ms: float | None = None,
    recipe: Recipe | None = None, rule: SandwichRule | None = None, device: torch.device | str = "cpu",
    latency: dict[str, Any] | None = None, root: str | Path | None = None, seed: int = 0, progress: bool = False,
) -> SupernetRanker:
    """Measure the bands, train (or load) a supernet for each band that holds candidates within ``limit_ms``."""
    sharing_rule(space.family)  # a clear error before anything is timed or trained
    if is_union(space):
        return _subspace_supernets(space, task, teacher, limit_ms=limit_ms, recipe=recipe, rule=rule, device=device,
                                   latency=latency, root=root, seed=seed, progress=progress)
    device = torch.device(device)
    recipe = recipe or Recipe(**DEFAULT_RECIPE, seed=seed)
    rule = resolve_rule(rule or SandwichRule(), space, task, teacher, seed)
    latency = latency or LATENCY_SEARCH
    bands_folder = _bands_folder(space, task, bands, device, latency, seed, root)
    measured = _cached_bands(space, task, bands, device, latency, seed, bands_folder / "bands.json")
    holdout_task = carve_holdout(task, seed=seed)
    key = stable_hash({"teacher": weights_sha(teacher), "data": holdout_task.fingerprint, "bands": measured.edges,
                       "space": space.record(), "recipe": recipe.to_dict(), "rule": rule.to_dict(),
                       "version": FORMAT_VERSION}, length=16)
    folder = bands_folder / key
    trained = measured.bands_below(limit_ms)
    pool = BandPool(space, measured, seed=seed)
    trained = [b for b in trained if len(pool.members[b])]
    outputs = teacher_outputs(teacher, holdout_task, recipe, device)  # shared with every band (and cached)
    supernets, histories = {}, {}
    for band in trained:
        supernets[band], histories[band] = _band_supernet(space, holdout_task, pool, band, outputs, recipe, rule,
                                                          folder / f"band{band}", device, progress, teacher)
    return SupernetRanker(measured, supernets, holdout_task, _teacher_logits(teacher, holdout_task, device), device,
                          rule.temperature, histories, folder)


def resolve_rule(rule: SandwichRule, space, task: Task, teacher: nn.Module | None, seed: int = 0) -> SandwichRule:
    """The rule with its objective made concrete for this teacher and the space's students (one of them built on the
    meta device: only its structure is read); a relational objective without transformers raises ValueError."""
    part = space.parts[0] if is_union(space) else space
    with torch.device("meta"):
        probe = create_model(part.sample(1, seed=seed)[0], num_classes=task.num_classes, in_chans=task.in_chans)
    return rule.resolved(probe, teacher)


def _subspace_supernets(space: UnionSpace, task: Task, teacher: nn.Module, *, limit_ms: float | None, device,
                        latency: dict[str, Any] | None, root, seed: int, **options: Any) -> SupernetRanker:
    """AutoDistil's hand partition: one supernet per declared subspace (each a one-band space, cached as such).
    A subspace whose smallest member (every key at its least) is over ``limit_ms`` holds nothing within the budget
    and is not trained, unless it is the fastest subspace."""
    if len(space.families) > 1:
        raise SpaceError(f"A supernet shares weights within one family; {space.name} mixes {', '.join(space.families)}.")
    device, latency = torch.device(device), latency or LATENCY_SEARCH
    fastest = {i: _fastest_ms(part, task, device, latency, seed, root) for i, part in enumerate(space.parts)}
    trained = [i for i in fastest if limit_ms is None or fastest[i] <= limit_ms] or [min(fastest, key=fastest.get)]
    logger.info(f"supernet: {len(trained)} of {len(fastest)} subspace(s) of {space.name} hold candidates within the budget")
    rankers = {i: prepare_supernets(space.parts[i], task, teacher, bands=1, limit_ms=None, device=device, latency=latency,
                                    root=root, seed=seed, **options) for i in trained}
    first = next(iter(rankers.values()))
    partition = Subspaces(space, {i: r.bands for i, r in rankers.items()}, fastest)
    return SupernetRanker(partition, {i: r.supernets[0] for i, r in rankers.items()}, first.task, first.teacher_logits,
                          device, first.temperature, {i: r.histories[0] for i, r in rankers.items()},
                          _supernets_root(root), {i: r.weights_files()[0] for i, r in rankers.items()})


def _fastest_ms(part: SearchSpace, task: Task, device: torch.device, latency: dict, seed: int, root) -> float:
    """The subspace's smallest member timed (each numeric key at its least; else the fastest of a timed sample) —
    once per (subspace, device, settings), kept beside its bands: re-timed, it would move a little and with it the
    subspaces a run trains."""
    import json

    from kdsearch.cost import measure_latency

    folder = _bands_folder(part, task, 1, device, latency, seed, root)
    if not all(part.is_numeric(k) for k in part.choices):
        return min(r["latency_ms"] for r in _cached_bands(part, task, 1, device, latency, seed, folder / "bands.json").sample)
    path = folder / "fastest.json"
    if path.exists():
        return float(json.loads(path.read_text())["latency_ms"])
    torch.manual_seed(seed)
    smallest = part.config({k: min(v) for k, v in part.choices.items()})
    model = create_model(smallest, num_classes=task.num_classes, in_chans=task.in_chans).to(device)
    ms = measure_latency(model, task.input_shape, device=device, **latency).p50_ms
    atomic_write_json(path, {"config": smallest, "latency_ms": ms})
    return ms


def _bands_folder(space: SearchSpace, task: Task, bands: int, device: torch.device, latency: dict, seed: int, root) -> Path:
    """Where a space's bands (and their supernets) are cached: one folder per (space, input, device, settings)."""
    from kdsearch.cost.latency import _device_name

    key = stable_hash({"space": space.record(), "input": list(task.input_shape), "device": _device_name(device),
                       "latency": latency, "bands": bands, "seed": seed}, length=16)
    return _supernets_root(root) / key


def _supernets_root(root) -> Path:
    """Where supernets are cached: ``root`` when given, else the user's kdsearch cache."""
    return Path(root or cache_dir() / "supernets")


def _cached_bands(space, task, bands, device, latency, seed, path: Path) -> LatencyBands:
    """Band edges are measured once per (space, device, settings) and reused: retimed, they would move a little and
    every supernet keyed on them would be trained again."""
    import json

    if path.exists():
        measured = LatencyBands.from_dict(json.loads(path.read_text()))
        logger.info(f"supernet: {measured.count} latency band(s) reused from {path.parent.name} "
                    f"(edges {', '.join(f'{e:.2f}' for e in measured.edges) or 'none'} ms)")
        return measured
    measured = measure_bands(space, task, bands, device=device, latency=latency, seed=seed)
    atomic_write_json(path, measured.to_dict())
    return measured


def _band_supernet(space, task, pool, band, outputs, recipe, rule, folder: Path, device, progress, teacher=None):
    import json

    from safetensors.torch import load_file

    supernet = Supernet(space, task.num_classes, task.in_chans).to(device)
    weights = folder / WEIGHTS_FILE
    if weights.exists():
        supernet.shared.load_state_dict(load_file(str(weights), device=str(device)))
        history = json.loads((folder / "history.json").read_text())
        logger.info(f"supernet band {band + 1}: reused ({len(history)} epochs, cache {folder.parent.name})")
        return supernet.eval(), history
    started = time.perf_counter()
    if teacher is not None and supernet.start_from(teacher.to(device)):  # a resumed run's checkpoint replaces it
        logger.info(f"supernet band {band + 1}: starts from the teacher's own weights, sliced")
    history = train_band(supernet, pool, band, task, outputs, recipe, rule, folder=folder, device=device, progress=progress,
                         teacher=teacher)
    last = history[-1]
    logger.info(f"supernet band {band + 1}: {len(pool.members[band])} candidates of the pool, {len(history)} epochs, "
                f"hold-out accuracy largest {last['holdout_accuracy_largest']:.3f} / smallest {last['holdout_accuracy_smallest']:.3f} "
                f"[{time.perf_counter() - started:.0f} s]")
    return supernet.eval(), history


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, task: Task, device: torch.device) -> torch.Tensor:
    teacher = teacher.to(device).eval()
    return torch.cat([as_logits(teacher(x)).float() for x, _ in task.batches("val", 256, device=device)])


__all__ = [
    "DEFAULT_RECIPE", "BandPool", "LatencyBands", "SandwichRule", "Supernet", "SupernetRanker", "carve_holdout",
    "measure_bands", "prepare_supernets", "recalibrate", "resolve_rule",
]
