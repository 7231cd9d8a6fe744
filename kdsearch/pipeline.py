"""``find``: data → teacher → space → cost → proxies → search → distill → report, in one run folder.

The run folder is the single source of truth (config.yaml, study.db, candidates.csv, students/,
report.html). Calling ``find`` again with the same ``out`` resumes: finished trials, finalists and
finished students are kept; an interrupted student continues from its last epoch.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
import yaml

from kdsearch import __version__
from kdsearch._util import atomic_write_json, atomic_write_text, file_sha256, resolve_device, seed_everything, stable_hash
from kdsearch.cost import Budget, count_flops, count_params, measure_latency, parse_budget
from kdsearch.data import DataSpec, Task, load_task
from kdsearch.distill import create_loss, distill_student
from kdsearch.exceptions import BudgetError, KdsearchError, RunFolderError
from kdsearch.proxies import ProxyContext, list_proxies, parse_proxies, score
from kdsearch.proxies.ensemble import REFERENCE_SIZE, is_ensemble, parse_ensemble
from kdsearch.search import SAMPLERS, run_search
from kdsearch.spaces import SearchSpace, create_model, default_space_path, load_space
from kdsearch.teacher import Teacher, load_teacher
from kdsearch.teacher.teacher import teacher_summary
from kdsearch.training import Recipe, TrainingDiverged

STUDY_NAME = "kdsearch"
# Settings that define what a run searches; a run folder refuses to resume under different ones.
IDENTITY_KEYS = ("teacher", "teacher_weights_sha", "data", "space", "space_sha", "budget", "proxies", "device", "batch_size", "threads", "seed", "loss")
# The search screens thousands of candidates: a shorter warm-up (the FLOPs pass has already run the model
# once) and a 3 % target; every finalist is re-measured with LATENCY_FINAL before it is distilled.
LATENCY_SEARCH = {"max_time_s": 0.5, "rel_precision": 0.03, "min_repeats": 10, "warmup_s": 0.02}
LATENCY_FINAL = {"max_time_s": 3.0, "rel_precision": 0.01, "min_repeats": 50, "max_repeats": 2000}


@dataclass
class FindResult:
    run_dir: Path
    candidates: pd.DataFrame
    teacher: dict
    budget: str
    notes: list[str] = field(default_factory=list)

    @property
    def students(self) -> pd.DataFrame:
        """Distilled students within budget, best first."""
        df = self.candidates
        df = df[df["distilled_accuracy"].notna() & df["within_budget"]]
        return df.sort_values("distilled_accuracy", ascending=False)

    @property
    def best(self) -> dict | None:
        s = self.students
        return None if s.empty else s.iloc[0].to_dict()

    def load_best(self):
        from kdsearch.export import load_run_student

        return load_run_student(self.run_dir, best=True)


def _log(quiet: bool):
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _teacher_recipe(task: Task, pretrained: bool, epochs: int | None) -> Recipe | None:
    """The default preparation recipe with the user's epoch count, or None to keep the default."""
    if epochs is None:
        return None
    from kdsearch.teacher.teacher import default_teacher_recipe

    recipe = default_teacher_recipe(task, "timm-pretrained" if pretrained else "random-init")
    recipe.epochs = epochs
    return recipe


def _check_run_folder(out: Path, config: dict) -> None:
    existing = out / "config.yaml"
    if not existing.exists():
        if out.exists() and any(out.iterdir()):
            raise RunFolderError(
                f"--out {out} already holds files that are not a kdsearch run; choose an empty or new folder."
            )
        return
    try:
        old = yaml.safe_load(existing.read_text()) or {}
    except yaml.YAMLError:
        raise RunFolderError(f"{existing} is unreadable; delete the run folder {out} or choose another --out.") from None
    for key in IDENTITY_KEYS:
        if old.get(key) != config.get(key):
            raise RunFolderError(
                f"--out {out} holds a different study ({key}: {old.get(key)!r} there, {config.get(key)!r} now); "
                "choose another --out, or delete that folder to start over."
            )


def _study_rows(study: optuna.Study) -> dict[str, dict]:
    """One row per distinct candidate from the study's trials (the first trial that scored it)."""
    rows: dict[str, dict] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = t.user_attrs
        cid = attrs.get("candidate_id")
        if cid and cid not in rows:
            rows[cid] = {"trial": t.number, **attrs}
    return rows


def candidate_evaluator(task, ctx: ProxyContext, proxies: list[str], device, *, batch_size: int = 1, threads: int = 1,
                        seed: int = 0):
    """What the search does to one candidate: build it, count params/FLOPs, time it, score its proxies."""

    def evaluate(config: dict) -> dict:
        torch.manual_seed(seed)  # proxies on random-init students are seeded per candidate
        model = create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device)
        metrics: dict[str, Any] = {"params": count_params(model), "flops": count_flops(model, task.input_shape)}
        lat = measure_latency(model, task.input_shape, device=device, batch_size=batch_size, threads=threads, **LATENCY_SEARCH)
        metrics.update({
            "latency_ms": lat.p50_ms, "latency_p90_ms": lat.p90_ms, "latency_iqr_ms": lat.iqr_ms,
            "latency_repeats": lat.repeats, "latency_key": lat.key,
        })
        metrics.update(score(proxies, model, ctx, metrics))
        return {k: v for k, v in metrics.items() if not k.startswith("_")}

    return evaluate


def _reference_models(space: SearchSpace, task, device, seed: int) -> list:
    """The seeded random population that ensemble proxies rank candidates within."""
    models = []
    for i, config in enumerate(space.sample(REFERENCE_SIZE, seed=seed)):
        torch.manual_seed(seed + i)
        models.append(create_model(config, num_classes=task.num_classes, in_chans=task.in_chans).to(device))
    return models


def find(
    teacher: str = "resnet101",
    budget: str = "10ms",
    *,
    data: str = "digits",
    data_root: str | None = None,
    input_size: int | None = None,
    train_samples: int | None = None,
    val_samples: int | None = None,
    space: str | None = None,
    out: str | Path | None = None,
    teacher_weights: str | None = None,
    pretrained: bool = True,
    trials: int = 100,
    timeout: float | None = None,
    top_k: int = 3,
    proxy: str = "default",
    sampler: str = "auto",
    device: str = "auto",
    batch_size: int = 1,
    threads: int = 1,
    epochs: int = 10,
    loss: str = "kd",
    loss_options: dict | None = None,
    teacher_epochs: int | None = None,
    storage: str | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> FindResult:
    """Find the best students of ``teacher`` under ``budget`` and distil the top ``top_k``."""
    log = _log(quiet)
    progress = not quiet
    # -------------------------------------------------------------- validate everything first
    parsed_budget = parse_budget(budget)
    proxies = parse_proxies(proxy)
    if sampler not in SAMPLERS:
        raise KdsearchError(f"Unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
    for name, value in (("trials", trials), ("top_k", top_k), ("epochs", epochs), ("batch_size", batch_size), ("threads", threads)):
        if value < 1:
            raise KdsearchError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
    torch_device = resolve_device(device)
    spec = DataSpec(data=data, data_root=data_root, input_size=input_size, train_samples=train_samples, val_samples=val_samples, seed=seed)
    task = load_task(spec, progress=progress)
    log(f"data: {task.description}")
    space_obj: SearchSpace = load_space(space) if space else load_space(default_space_path(task.input_shape[1]))
    if not space:
        log(f"space: {space_obj.name} (default for {task.input_shape[1]}x{task.input_shape[2]} inputs; --space to change)")
    else:
        log(f"space: {space_obj.name} ({space_obj.size:,} candidates)")
    run_dir = Path(out) if out else Path("runs") / f"{Path(str(teacher)).stem}-{parsed_budget.text}-{datetime.now():%Y%m%d-%H%M%S}"
    config: dict[str, Any] = {
        "kdsearch_version": __version__,
        "teacher": teacher,
        "teacher_weights": teacher_weights,
        "teacher_weights_sha": file_sha256(teacher_weights) if teacher_weights and Path(teacher_weights).is_file() else None,
        "data": spec.to_dict(),
        "space": space_obj.name,
        "space_sha": stable_hash(space_obj.record()),
        "space_path": space_obj.path,
        "budget": parsed_budget.text,
        "budget_metric": parsed_budget.metric,
        "budget_limit": parsed_budget.limit,
        "proxies": proxies,
        "sampler": sampler,
        "device": torch_device.type,
        "batch_size": batch_size,
        "threads": threads,
        "seed": seed,
        "trials": trials,
        "top_k": top_k,
        "epochs": epochs,
        "storage": storage or f"sqlite:///{(run_dir / 'study.db').resolve()}",
        "loss": create_loss(loss, **(loss_options or {})).config(),
    }
    _check_run_folder(run_dir, config)
    seed_everything(seed)

    # -------------------------------------------------------------- teacher
    t0 = time.perf_counter()
    latency_kwargs = {"batch_size": batch_size, "threads": threads, **LATENCY_FINAL}
    teacher_obj: Teacher = load_teacher(
        teacher, task, weights=teacher_weights, device=torch_device, pretrained=pretrained,
        recipe=_teacher_recipe(task, pretrained, teacher_epochs), latency_kwargs=latency_kwargs, progress=progress, log=log,
    )
    log(f"teacher: {teacher_summary(teacher_obj)} [{time.perf_counter() - t0:.0f} s]")
    # The run folder is written only once the inputs, teacher included, are known to be good.
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = (run_dir / "config.yaml").exists()
    previous = yaml.safe_load((run_dir / "config.yaml").read_text()) if resumed else {}
    config["created"] = previous.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(run_dir / "data.json", task.record())
    atomic_write_json(run_dir / "teacher.json", teacher_obj.record())
    log(f"run folder: {run_dir}{' (resuming)' if resumed else ''}")

    # A few real validation images travel with the run: exports are verified on them without reloading data.
    from safetensors.torch import save_file

    sample_x, sample_y = task.sample_batch(8, split="val", seed=seed)
    save_file({"images": sample_x.contiguous(), "labels": sample_y.contiguous()}, str(run_dir / ".sample_batch.tmp"))
    (run_dir / ".sample_batch.tmp").replace(run_dir / "sample_batch.safetensors")

    # -------------------------------------------------------------- search
    images, labels = task.sample_batch(64, seed=seed)
    ctx = ProxyContext(
        teacher=teacher_obj, images=images.to(torch_device), labels=labels.to(torch_device),
        num_classes=task.num_classes, input_shape=task.input_shape,
        reference_models=lambda: _reference_models(space_obj, task, torch_device, seed),
    )
    ensembles = [p for p in proxies if is_ensemble(p)]
    if ensembles:
        t0 = time.perf_counter()
        for component in sorted({c for p in ensembles for c in parse_ensemble(p, list_proxies()).weights}):
            ctx.reference_scores(component)
        log(f"proxies: reference population of {REFERENCE_SIZE} candidates scored for {', '.join(ensembles)} "
            f"[{time.perf_counter() - t0:.0f} s]")

    evaluate = candidate_evaluator(task, ctx, proxies, torch_device, batch_size=batch_size, threads=threads, seed=seed)

    t0 = time.perf_counter()
    study = run_search(
        space_obj, evaluate, budget=parsed_budget, objective=proxies[0], storage=config["storage"],
        study_name=STUDY_NAME, n_trials=trials, timeout=timeout, seed=seed, sampler=sampler, progress=progress,
    )
    rows = _study_rows(study)
    if not rows:
        raise RunFolderError(f"No candidate of {space_obj.name} could be scored; see the errors above and check the space.")
    feasible = {cid: r for cid, r in rows.items() if parsed_budget.fits(r)}
    log(f"search: {len(rows)} distinct candidates scored, {len(feasible)} within {parsed_budget.text} [{time.perf_counter() - t0:.0f} s]")
    if not feasible:
        best = min(rows.values(), key=lambda r: r[parsed_budget.metric])
        raise BudgetError(
            f"No candidate of {space_obj.name} fits the budget {parsed_budget.text}: the smallest found is "
            f"{parsed_budget.describe(best[parsed_budget.metric])} on {torch_device.type}; raise --budget (with a new --out) or choose a smaller --space."
        )

    # -------------------------------------------------------------- finalists: re-measured, then distilled
    finalists_path = run_dir / "finalists.json"
    finalists: dict[str, dict] = json.loads(finalists_path.read_text()) if finalists_path.exists() else {}
    ranked = sorted(feasible.values(), key=lambda r: r[proxies[0]], reverse=True)
    accepted = [cid for cid, f in finalists.items() if f["within_budget"]]
    for row in ranked:
        if len(accepted) >= top_k:
            break
        cid = row["candidate_id"]
        if cid in finalists:
            continue
        model = create_model(row["config"], num_classes=task.num_classes, in_chans=task.in_chans)
        lat = measure_latency(model, task.input_shape, device=torch_device, batch_size=batch_size, threads=threads, **LATENCY_FINAL)
        final = {**row, "final_latency": lat.to_dict(), "latency_ms": lat.p50_ms}
        final["within_budget"] = parsed_budget.fits(final)
        finalists[cid] = final
        if final["within_budget"]:
            accepted.append(cid)
        else:
            log(f"finalist {cid}: {lat.p50_ms:.3f} ms on re-measurement exceeds {parsed_budget.text}; taking the next one")
        atomic_write_json(finalists_path, finalists)

    recipe = Recipe(epochs=epochs, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=5e-4, seed=seed)
    for rank, cid in enumerate(accepted, 1):
        student_dir = run_dir / "students" / cid
        if (student_dir / "result.json").exists():
            continue
        entry = finalists[cid]
        t0 = time.perf_counter()
        try:
            result = distill_student(
                entry["config"], teacher_obj.model, task, student_dir, recipe, loss=loss, loss_options=loss_options,
                device=torch_device, progress=progress, desc=f"distilling {rank}/{len(accepted)} ({cid})",
                extra={"candidate_id": cid},
            )
        except TrainingDiverged as exc:
            log(f"student {cid}: {exc}; marked failed")
            atomic_write_json(student_dir / "result.json", {"candidate_id": cid, "status": "diverged", "error": str(exc)})
            continue
        log(f"student {rank}/{len(accepted)} {cid}: val acc {result['val_accuracy']:.4f} at {entry['latency_ms']:.3f} ms [{time.perf_counter() - t0:.0f} s]")

    candidates = _candidates_table(rows, finalists, run_dir, parsed_budget, proxies)
    from kdsearch.report import write_candidates

    write_candidates(run_dir, candidates)
    from kdsearch.report import build_report

    build_report(run_dir)
    return FindResult(run_dir=run_dir, candidates=candidates, teacher=teacher_obj.record(), budget=parsed_budget.text, notes=teacher_obj.notes)


def _candidates_table(rows: dict, finalists: dict, run_dir: Path, budget: Budget, proxies: list[str]) -> pd.DataFrame:
    records = []
    for cid, row in rows.items():
        final = finalists.get(cid)
        result_path = run_dir / "students" / cid / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        rec = {
            "candidate_id": cid,
            "trial": row["trial"],
            "config": json.dumps(row["config"], sort_keys=True),
            "params": row["params"],
            "flops": row["flops"],
            "latency_p50_ms": row["latency_ms"],
            "latency_p90_ms": row["latency_p90_ms"],
            "latency_iqr_ms": row["latency_iqr_ms"],
        }
        for name in proxies:
            rec[f"proxy_{name}"] = row.get(name)
            rec[f"proxy_{name}_ms"] = row.get(f"{name}_ms")
        rec["finalist"] = final is not None
        if final:
            lat = final["final_latency"]
            rec.update({"latency_p50_ms": lat["p50_ms"], "latency_p90_ms": lat["p90_ms"], "latency_iqr_ms": lat["iqr_ms"], "latency_repeats": lat["repeats"]})
        rec["within_budget"] = budget.fits({"latency_ms": rec["latency_p50_ms"], "flops": rec["flops"], "params": rec["params"]})
        rec["distilled_accuracy"] = result.get("val_accuracy") if result else None
        rec["status"] = (result or {}).get("status", "finalist" if final else "scored")
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    return df.sort_values(f"proxy_{proxies[0]}", ascending=False, ignore_index=True)


def resolve_student(student: str | dict | None, *, from_run: str | Path | None = None, trial: int | None = None) -> dict:
    """A candidate config from a dict, a JSON string, a timm name, or a trial of a run folder."""
    from kdsearch.exceptions import SpaceError

    if from_run is not None:
        if trial is None:
            raise KdsearchError("--from-run needs --trial N (the trial numbers are in 'kdsearch report RUN').")
        from kdsearch.report import read_run

        _, candidates, _ = read_run(from_run)
        row = candidates[candidates["trial"] == trial]
        if row.empty:
            raise KdsearchError(f"Run {from_run} has no trial {trial}; 'kdsearch report {from_run}' lists the trials.")
        return json.loads(row.iloc[0]["config"])
    if isinstance(student, dict):
        return student
    if not student:
        raise KdsearchError("No student given; pass --student (a timm name or a JSON config) or --from-run RUN --trial N.")
    text = student.strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"--student is not valid JSON ({exc.msg} at column {exc.colno}); quote it as one shell word.") from None
        create_model(config, num_classes=2)  # validates family and keys with a clear message
        return config
    import timm

    if not timm.is_model(text):
        from kdsearch._util import suggest

        raise SpaceError(f"Unknown student {text!r}: not a timm model or a JSON config;{suggest(text, timm.list_models())}")
    return {"family": "timm", "model": text}


def train_student(
    teacher: str | None = None,
    student: str | dict | None = None,
    *,
    from_run: str | Path | None = None,
    trial: int | None = None,
    data: str | None = None,
    data_root: str | None = None,
    input_size: int | None = None,
    train_samples: int | None = None,
    val_samples: int | None = None,
    teacher_weights: str | None = None,
    pretrained: bool = True,
    teacher_epochs: int | None = None,
    loss: str = "kd",
    loss_options: dict | None = None,
    recipe: Recipe | None = None,
    device: str = "auto",
    out: str | Path = "student",
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Distil one student (``kdsearch distill``): the same code ``find`` runs for its top-k.

    With ``from_run``, teacher and data default to that run's; otherwise data defaults to digits.
    """
    log = _log(quiet)
    config = resolve_student(student, from_run=from_run, trial=trial)
    if from_run is not None:
        from kdsearch.report import read_run

        run_config, _, _ = read_run(from_run)
        teacher = teacher or run_config["teacher"]
        data = data or run_config["data"]["data"]
        data_root = data_root or run_config["data"]["data_root"]
    if not teacher:
        raise KdsearchError("No teacher given; pass --teacher (or --from-run RUN to use that run's teacher).")
    data = data or "digits"
    create_loss(loss, **(loss_options or {}))  # validate before any work
    recipe = recipe or Recipe()
    out = Path(out)
    if not resume and ((out / "checkpoint.pt").exists() or (out / "result.json").exists()):
        raise RunFolderError(f"{out} already holds a distillation; pass --resume to continue it, or choose another --out.")
    torch_device = resolve_device(device)
    task = load_task(DataSpec(data=data, data_root=data_root, input_size=input_size, train_samples=train_samples,
                              val_samples=val_samples, seed=recipe.seed), progress=not quiet)
    log(f"data: {task.description}")
    teacher_obj = load_teacher(teacher, task, weights=teacher_weights, device=torch_device, pretrained=pretrained,
                               recipe=_teacher_recipe(task, pretrained, teacher_epochs), measure=False, progress=not quiet, log=log)
    log(f"teacher: {teacher_summary(teacher_obj)}")
    result = distill_student(
        config, teacher_obj.model, task, out, recipe, loss=loss, loss_options=loss_options, device=torch_device,
        progress=not quiet, desc=f"distilling ({loss})", extra={"teacher": teacher_obj.record(), "data": task.record()},
    )
    log(f"student: val acc {result['val_accuracy']:.4f} after {result['epochs']} epochs ({loss}); written to {out}")
    return result
