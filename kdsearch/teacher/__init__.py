"""Teacher: build or load the network to distil from, fit it to the task, report accuracy and latency.

Specs: a timm model name (pretrained through timm when reachable), ``package.module:callable``, or a
TorchScript / torch.export file. ``weights`` takes the usual checkpoint layouts. A teacher whose head
does not fit the task, or that has no task weights, is prepared (new head + fine-tuning) once and
cached by content hash, so the next run with the same teacher and data reuses it.
"""

from kdsearch.teacher.checkpoint import load_state_dict
from kdsearch.teacher.teacher import Teacher, check_network, load_network, load_teacher

__all__ = ["Teacher", "check_network", "load_network", "load_state_dict", "load_teacher"]
