"""A run: its settings (validated once, frozen, stored) and its folder (the only code that knows the file names)."""

from kdsearch.run.folder import STUDY_NAME, RunFolder, StudentFolder
from kdsearch.run.settings import RunSettings

__all__ = ["STUDY_NAME", "RunFolder", "RunSettings", "StudentFolder"]
