"""Families that wrap another library's catalogue: any timm architecture, and a candidate of an NNI model space."""

from __future__ import annotations

import torch.nn as nn

from kdsearch.spaces.family import register_family


# --------------------------------------------------------------------------- existing timm models
def timm(model: str, *, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """Any architecture timm knows, built untrained (students are distilled from scratch)."""
    import timm as _timm

    return _timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_chans)


# --------------------------------------------------------------------------- NNI model spaces
def nni(space: str, *, num_classes: int = 10, in_chans: int = 3, **choices) -> nn.Module:
    """A candidate of an NNI model space (``space``: 'nni:NasBench201' or 'nni:package.module:attr'), frozen by NNI;
    the other keys are the space's choice labels (kdsearch.spaces.nni_spaces, the optional nni extra)."""
    from kdsearch.spaces.nni_spaces import freeze

    return freeze(space, choices, num_classes=num_classes, in_chans=in_chans)



register_family(timm)
register_family(nni)
