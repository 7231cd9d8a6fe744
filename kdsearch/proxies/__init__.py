"""Training-free proxies: ``proxy(student, ctx, metrics) -> float``, higher = better for every one.

Registered (``list_proxies()`` is the full list): ``params`` and ``flops`` (size), DisWOT (Dong et al.,
CVPR 2023: ``diswot`` and its two terms ``diswot_semantic`` / ``diswot_relation``), teacher CKA and
DisWOT at random init (``teacher_aware``), a trained supernet's verdict (``supernet``, ``supernet_kd``), and the zero-cost zoo (``zoo``: grad_norm, snip, grasp,
fisher, jacob_cov, nwot, synflow, zico, zen, meco). ``a+b`` or ``2*a+b`` is a rank ensemble.
"""

# Importing the definitions registers them; they import the registry, never this package.
from kdsearch.proxies import diswot as _diswot  # noqa: F401
from kdsearch.proxies import size as _size  # noqa: F401
from kdsearch.proxies import supernet as _supernet  # noqa: F401
from kdsearch.proxies import teacher_aware as _teacher_aware  # noqa: F401
from kdsearch.proxies import zoo as _zoo  # noqa: F401
from kdsearch.proxies.registry import (
    PROXIES,
    ProxyContext,
    ensemble_components,
    get_proxy,
    list_proxies,
    parse_proxies,
    register_proxy,
    score,
)
from kdsearch.proxies.supernet import SUPERNET_PROXIES, needs_supernet

__all__ = ["PROXIES", "ProxyContext", "ensemble_components", "get_proxy", "list_proxies", "parse_proxies", "register_proxy", "score", "SUPERNET_PROXIES", "needs_supernet"]
