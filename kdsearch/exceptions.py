"""One exception hierarchy. Every message is one sentence naming the problem and the fix.

The CLI is the only place that turns these into an exit code (2)."""


class KdsearchError(Exception):
    """Base class of every error kdsearch raises on purpose."""


class DataError(KdsearchError):
    """The data spec or the data on disk cannot be used."""


class TeacherError(KdsearchError):
    """The teacher cannot be built, loaded or prepared."""


class SpaceError(KdsearchError):
    """A search-space file or candidate config is invalid."""


class BudgetError(KdsearchError):
    """The budget is malformed or nothing fits it."""


class ProxyError(KdsearchError):
    """An unknown proxy was asked for."""


class RunFolderError(KdsearchError):
    """The run folder is missing, incomplete or holds a different study."""


class CheckpointError(KdsearchError):
    """A checkpoint file cannot be read."""


class ExportError(KdsearchError):
    """A student cannot be exported."""


class DeviceError(KdsearchError):
    """The requested device is not available."""


class LossError(KdsearchError):
    """An unknown distillation loss, or a loss setting that cannot be read."""


class RecipeError(KdsearchError):
    """A training recipe setting is out of range or unknown."""


class TrainingDiverged(KdsearchError, RuntimeError):
    """The training loss became NaN or infinite (a RuntimeError too: the search goes on past it)."""


class SearchError(KdsearchError):
    """An unknown sampler or an unusable search setting."""


class SimilarityError(KdsearchError, ValueError):
    """Features cannot be compared (too few samples, mismatched batch sizes)."""


class ModelOutputError(KdsearchError, TypeError):
    """A teacher or student returned something that holds no logits."""


class DistributedError(KdsearchError, RuntimeError):
    """The processes of a torchrun job disagree (a broken multi-process setup)."""


class StorageError(KdsearchError):
    """The Optuna storage of a run cannot be reached, or holds another run."""


class WriteError(KdsearchError, OSError):
    """A file could not be written: the disk, a quota or a file-size limit is full."""


class RuntimeUnavailable(KdsearchError):
    """The deployment runtime asked for is not installed here or cannot run the network."""
