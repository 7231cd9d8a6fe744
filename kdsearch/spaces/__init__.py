"""Search spaces: YAML files → :class:`SearchSpace`; candidates are plain dicts built by :func:`create_model`.

A space file::

    family: resnet_cifar          # a registered builder (kdsearch.spaces.list_families())
    description: free text
    resolution: [16, 64]          # input sizes it is meant for; picks the default space
    choices:                      # searchable keys → allowed values
      depth1: [1, 3, 5, 7]
    fixed:                        # keys held constant (optional)
      width1: 16

A candidate is ``{"family": ..., key: value, ...}``: hashable, JSON-able, and it rebuilds the
identical architecture anywhere through ``create_model(candidate, num_classes=..., in_chans=...)``.
"""

from kdsearch.spaces.families import FamilySpec, SharingRule, list_families, register_family
from kdsearch.spaces.loading import load_space, load_spaces
from kdsearch.spaces.space import (
    SPACES_DIR,
    SearchSpace,
    candidate_id,
    create_model,
    default_space_path,
    list_spaces,
)
from kdsearch.spaces.union import UnionSpace

__all__ = [
    "UnionSpace",
    "load_spaces",
    "FamilySpec",
    "SharingRule",
    "SPACES_DIR",
    "SearchSpace",
    "candidate_id",
    "create_model",
    "default_space_path",
    "list_families",
    "list_spaces",
    "load_space",
    "register_family",
]
