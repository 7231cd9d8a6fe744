"""The training engine that teacher preparation and distillation share: the recipe (``recipe``), the loop with its
checkpoints, resume, precision and DDP (``loop.fit``), and evaluation on the validation split (``evaluation``)."""

from kdsearch.training.evaluation import (
    VAL_KD_TEMPERATURE,
    evaluate,
    evaluate_scores,
    fold_batchnorm,
    teacher_class_means,
    validation_logits,
)
from kdsearch.training.loop import (
    FINITE_CHECK_EVERY,
    CrossEntropyObjective,
    TrainingDiverged,
    TrainResult,
    close_distributed,
    distributed_context,
    fit,
)
from kdsearch.training.recipe import (
    CPU_CHANNELS_LAST_MAX_PX,
    RECIPE_CHOICES,
    STUDENT_RECIPE,
    Recipe,
    amp_dtype_for,
    epoch_seed,
    lr_at,
    make_optimizer,
    memory_format_for,
)

__all__ = [
    "CPU_CHANNELS_LAST_MAX_PX", "FINITE_CHECK_EVERY", "RECIPE_CHOICES", "STUDENT_RECIPE", "VAL_KD_TEMPERATURE",
    "CrossEntropyObjective", "Recipe", "TrainResult", "TrainingDiverged", "amp_dtype_for", "close_distributed",
    "distributed_context", "epoch_seed", "evaluate", "evaluate_scores", "fit", "fold_batchnorm", "lr_at",
    "make_optimizer", "memory_format_for", "teacher_class_means", "validation_logits",
]
