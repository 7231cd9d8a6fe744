"""Every bundled family, registered: importing this module imports each family's module (whose last lines register
it) and re-exports the registry (``kdsearch.spaces.family``). A new family: a module of its own with its builder and
its ``register_family(...)`` line, imported here."""

from kdsearch.spaces import mobilenetv3 as _mobilenetv3  # noqa: F401  (registers mobilenetv3)
from kdsearch.spaces import vit as _vit  # noqa: F401  (registers vit)
from kdsearch.spaces import zoo as _zoo  # noqa: F401  (registers timm, nni)
from kdsearch.spaces.family import (
    FAMILIES,
    NESTED,
    FamilySpec,
    SharingRule,
    family_keys,
    family_recipe,
    family_spec,
    get_family,
    largest_config,
    latency_blocks,
    list_families,
    open_keys,
    register_family,
    sharing_rule,
)
from kdsearch.spaces.nasbench201 import NB201_EDGES, NB201_OPS, nasbench201, nb201_arch_str, nb201_config
from kdsearch.spaces.resnet import CifarResNet, resnet_cifar, resnet_timm

__all__ = [
    "FAMILIES", "NB201_EDGES", "NB201_OPS", "NESTED", "CifarResNet", "FamilySpec", "SharingRule", "family_keys", "family_recipe",
    "family_spec", "get_family", "largest_config", "latency_blocks", "list_families", "nasbench201", "nb201_arch_str",
    "nb201_config", "open_keys", "register_family", "resnet_cifar", "resnet_timm", "sharing_rule",
]
