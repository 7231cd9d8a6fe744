"""Weight sharing: one set of weights from which every candidate of a space is cut, as OFA / BigNAS do.

A family's supernet is an ordinary module holding the largest weights of every choice; a candidate's
module is the plain family module (the one ``create_model`` builds) whose every tensor is a cut of a
supernet tensor: the first ``n`` channels (width, expansion), the first ``d`` blocks of a stage (depth),
the centre ``k × k`` of a kernel (OFA's kernel rule), or the weights of the op an edge chose (NAS-Bench-201).
So a subnet is trained by running its own module on views of the supernet's parameters
(``torch.func.functional_call``: gradients flow into the shared weights), and extracted with inherited
weights as a plain module — latency, proxies, distillation and export then see nothing unusual.

Per family, its :class:`~kdsearch.spaces.families.SharingRule` (part of the family's one registry entry) says which
config is the supernet's skeleton and how a subnet's tensor names map to the supernet's (for most families the
identity: the subnet's names are a subset).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdsearch.exceptions import SpaceError
from kdsearch.spaces import SearchSpace, create_model
from kdsearch.spaces.families import largest_config, sharing_rule
from kdsearch.taps import forward_taps


def cut(source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A view of ``source`` with ``shape``: leading channels, and the centre of a convolution's kernel."""
    if tuple(source.shape) == tuple(shape):
        return source
    if source.dim() != len(shape) or any(s < t for s, t in zip(source.shape, shape)):
        raise SpaceError(f"A subnet tensor of shape {tuple(shape)} cannot be cut from a supernet tensor of shape "
                         f"{tuple(source.shape)}; the space's choices exceed its supernet.")
    index = []
    for dim, (s, t) in enumerate(zip(source.shape, shape)):
        start = (s - t) // 2 if (source.dim() == 4 and dim >= 2) else 0  # OFA: a smaller kernel is the centre
        index.append(slice(start, start + t))
    return source[tuple(index)]


class Supernet(nn.Module):
    """The shared weights of one space, and the subnets cut from them.

    ``subnet(config)`` is the candidate's plain module (built once per config, weights not initialised) and
    ``views(config)`` the dictionary of its parameters as views of the supernet's: ``forward(config, x)`` runs
    the candidate on them, so a backward pass trains the shared weights. ``extract(config)`` returns an
    independent plain module with copies of the inherited weights."""

    def __init__(self, space: SearchSpace, num_classes: int, in_chans: int):
        super().__init__()
        self.space, self.num_classes, self.in_chans = space, num_classes, in_chans
        self.rule = sharing_rule(space.family)
        self.shared = self.rule.build(space, num_classes, in_chans)
        self._skeletons: dict[str, nn.Module] = {}

    def start_from(self, teacher: nn.Module) -> bool:
        """Start the shared weights from cuts of the teacher's own, where the family can (a ViT teacher at least as
        large as the supernet: AutoDistil's SuperLM starts from BERT); returns whether it did."""
        if self.rule.from_teacher is None:
            return False
        return bool(self.rule.from_teacher(self.shared, teacher, largest_config(self.space)))

    def _skeleton(self, config: dict) -> nn.Module:
        from kdsearch.spaces import candidate_id

        key = candidate_id(config)
        if key not in self._skeletons:
            if len(self._skeletons) >= 256:  # a few hundred small modules; the oldest go first
                self._skeletons.pop(next(iter(self._skeletons)))
            with torch.device("meta"):  # the skeleton's own parameters are never used: no memory, no init
                module = create_model(config, num_classes=self.num_classes, in_chans=self.in_chans)
            self._skeletons[key] = module
        return self._skeletons[key]

    def views(self, config: dict) -> dict[str, torch.Tensor]:
        """The subnet's parameters and buffers as cuts of the supernet's (BN statistics included)."""
        shared = dict(self.shared.named_parameters())
        shared.update(self.shared.named_buffers())
        out = {}
        for name, tensor in [*self._skeleton(config).named_parameters(), *self._skeleton(config).named_buffers()]:
            source = self.rule.source_name(name, config, self.space)
            if source not in shared:
                raise SpaceError(f"Subnet tensor {name!r} has no source {source!r} in the {self.space.family} supernet.")
            special = self.rule.cut(name, shared[source], tensor.shape) if self.rule.cut else None
            out[name] = cut(shared[source], tensor.shape) if special is None else special
        return out

    def forward(self, config: dict, x: torch.Tensor) -> torch.Tensor:
        """The subnet's logits on the shared weights. In training mode BatchNorm normalises with the batch's own
        statistics; the shared running statistics it updates mean nothing across subnets (``recalibrate`` sets
        a subnet's before it is scored)."""
        skeleton = self._skeleton(config).train(self.training)
        return torch.func.functional_call(skeleton, self.views(config), (x,))

    def taps(self, config: dict, x: torch.Tensor, attention_layer: int | None = None):
        """The subnet's taps (kdsearch.taps) on the shared weights, with one layer's attention when asked for."""
        skeleton = self._skeleton(config).train(self.training)
        tapped = _Tapped(skeleton, attention_layer)
        return torch.func.functional_call(tapped, {f"model.{k}": v for k, v in self.views(config).items()}, (x,))

    def extract(self, config: dict) -> nn.Module:
        """The candidate as a plain family module holding copies of its inherited weights."""
        inherited = {k: v.detach().clone() for k, v in self.views(config).items()}
        with torch.device("meta"):  # no random init of weights that are replaced at once (most of a build's time)
            model = create_model(config, num_classes=self.num_classes, in_chans=self.in_chans)
        model.load_state_dict(inherited, assign=True)
        if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # a tensor outside the state dict
            model = create_model(config, num_classes=self.num_classes, in_chans=self.in_chans)
            model.load_state_dict(inherited)
        return model.to(next(self.shared.parameters()).device)


class _Tapped(nn.Module):
    """A module whose forward is ``forward_taps`` of another (so that ``functional_call`` can run it on views)."""

    def __init__(self, model: nn.Module, attention_layer: int | None):
        super().__init__()
        self.model, self.attention_layer = model, attention_layer

    def forward(self, x: torch.Tensor):
        return forward_taps(self.model, x, self.attention_layer)


def recalibrate(model: nn.Module, batches) -> nn.Module:
    """BatchNorm statistics re-estimated for this subnet (AttentiveNAS's ``set_running_statistics``): reset, then a
    cumulative average over ``batches`` in training mode without gradients; the model is returned in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


__all__ = ["Supernet", "cut", "largest_config", "recalibrate"]
