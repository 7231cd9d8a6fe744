"""Data: turn a ``--data`` spec into a :class:`Task` (train/val images, classes, input shape, normalisation).

Specs:
  ``digits``          scikit-learn's bundled 8x8 digits, upsampled to 32x32 (offline, the default)
  ``fashion-mnist``   the official IDX files (default folder /usr/share/datasets/fashion-mnist)
  ``cifar10|cifar100`` torchvision datasets under ``data_root`` (downloaded when online)
  a directory         an ImageFolder: ``train/`` and ``test/``|``val/`` sub-folders, or one folder of
                      class folders split deterministically.

Images are held as uint8 tensors (N, C, H, W); normalisation and augmentation run per batch on the
training device, so the same Task serves CPU and CUDA.
"""

from kdsearch.data.task import LOADERS, DataSpec, Task, load_task

__all__ = ["LOADERS", "DataSpec", "Task", "load_task"]
