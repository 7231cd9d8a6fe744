"""The pipeline's public entry points: ``find`` (search, rank, distil, report: one run folder) and
``train_student`` / ``distill_student`` (one student), ``run_worker`` (``kdsearch worker``: join a run's storage)."""

from kdsearch.pipeline.find import FindResult, candidates_table, find, run_find, run_worker
from kdsearch.pipeline.stages import run_supernets
from kdsearch.pipeline.student import distill_student, resolve_student, train_student

__all__ = ["FindResult", "candidates_table", "distill_student", "find", "resolve_student", "run_find", "run_supernets", "run_worker", "train_student"]
