"""NNI model spaces as kdsearch spaces (the optional ``nni`` extra): ``--space nni:NasBench201`` or
``--space nni:package.module:SpaceOrFactory``.

NNI (archived upstream since 2024) describes a space as an ``nni.nas.nn.pytorch.ModelSpace`` whose mutables
(``LayerChoice``, ``ValueChoice`` …) simplify to labelled categorical choices. Those labels become the keys of a
kdsearch space of family ``nni``; a candidate is frozen through NNI (``space.freeze(sample)``) into a plain
``nn.Module``, and everything downstream (latency, proxies, distillation, export) works on that module.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import torch
import torch.nn as nn

from kdsearch._util import import_attr, suggest
from kdsearch.exceptions import SpaceError

PREFIX = "nni:"
INSTALL = "pip install 'kdsearch[nni]'"


def _nni():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NNI 3.0 warns about every torch class it does not know
            import nni.nas.hub.pytorch as hub
            import nni.nas.nn.pytorch  # noqa: F401
    except ImportError as exc:
        raise SpaceError(f"NNI model spaces need NNI ({exc.name or exc} is missing); install it with: {INSTALL}.") from None
    return hub


def _factory(spec: str):
    """The ModelSpace class or factory a spec names: a hub name (NasBench201) or package.module:attr."""
    hub = _nni()
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if ":" not in name:
        hub_names = [n for n in dir(hub) if n[:1].isupper()]
        if name not in hub_names:
            raise SpaceError(f"NNI has no hub space {name!r};{suggest(name, hub_names)} hub spaces: {', '.join(hub_names)}; "
                             "or give nni:package.module:SpaceOrFactory.")
        return getattr(hub, name)
    return import_attr(name, SpaceError, f"the NNI space {spec!r}")


@functools.lru_cache(maxsize=8)
def _instance(spec: str, num_classes: int | None):
    """The model space, built once per spec and class count (building a hub space takes up to a second)."""
    factory = _factory(spec)  # imports NNI first, its warnings silenced
    from nni.nas.nn.pytorch import ModelSpace

    if isinstance(factory, ModelSpace):
        return factory
    attempts = [{"num_labels": num_classes}, {"num_classes": num_classes}, {}] if num_classes else [{}]
    for kwargs in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                space = factory(**kwargs)
            break
        except TypeError:
            continue
    else:
        raise SpaceError(f"{spec!r} could not be called without arguments; give a factory that builds the ModelSpace.")
    if not isinstance(space, ModelSpace):
        raise SpaceError(f"{spec!r} built a {type(space).__name__}, not an NNI ModelSpace (nni.nas.nn.pytorch.ModelSpace).")
    return space


def nni_choices(spec: str) -> dict[str, list[Any]]:
    """The space's labelled choices (label → values); a continuous choice cannot be searched here and is refused."""
    space = _instance(spec, None)
    choices = {}
    for label, mutable in space.simplify().items():
        values = getattr(mutable, "values", None)
        if values is None:
            raise SpaceError(f"{spec!r}: choice {label!r} is a {type(mutable).__name__}, not a categorical choice; "
                             "kdsearch searches categorical NNI choices only (discretise it with nni.choice).")
        choices[str(label)] = [v for v in values]
    if not choices:
        raise SpaceError(f"{spec!r} has no choices to search; it is a fixed network, not a model space.")
    return choices


class NNIStudent(nn.Module):
    """A frozen NNI candidate; images with another channel count than the 3 NNI's spaces take are repeated or cut."""

    def __init__(self, net: nn.Module, in_chans: int):
        super().__init__()
        self.net, self.in_chans = net, in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_chans != 3:
            x = x.repeat(1, 3, 1, 1) if self.in_chans == 1 else x[:, :3]
        return self.net(x)


def freeze(spec: str, sample: dict[str, Any], *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """One candidate of an NNI space as a plain module (NNI freezes a copy; the space is left as it was)."""
    space = _instance(spec, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = space.freeze(sample)
    return NNIStudent(net, in_chans)


def nni_space_fields(spec: str) -> dict[str, Any]:
    """``nni:<hub name or package.module:attr>`` → the fields of a SearchSpace of family ``nni``."""
    doc = inspect.getdoc(_factory(spec)) or ""  # without NNI: the one line that names the extra
    choices = nni_choices(spec)
    name = spec[len(PREFIX):].replace(":", "-").replace(".", "-")
    return {"name": f"nni-{name}", "family": "nni", "choices": choices, "fixed": {"space": spec},
            "description": (doc.splitlines() or [""])[0], "path": spec}
