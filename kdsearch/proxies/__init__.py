"""Training-free proxies: ``proxy(student, teacher, batch) -> float``, higher = better for every one.

Registered here: ``params`` and ``flops`` (size: bigger students distil to higher accuracy), and
DisWOT (Dong et al., CVPR 2023): ``diswot`` = -(semantic distance + relation distance), with its two
terms also available alone as ``diswot_semantic`` and ``diswot_relation``.
"""

from kdsearch.proxies.registry import ProxyContext, get_proxy, list_proxies, parse_proxies, register_proxy, score

__all__ = ["ProxyContext", "get_proxy", "list_proxies", "parse_proxies", "register_proxy", "score"]
