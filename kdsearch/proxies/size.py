from kdsearch.cost import count_flops, count_params
from kdsearch.proxies.registry import register_proxy


@register_proxy("params")
def params(model, ctx, metrics) -> float:
    """Parameter count: hard to beat on depth-only spaces (DisWOT's own table: Kendall τ 0.87)."""
    return float(metrics["params"]) if "params" in metrics else float(count_params(model))


@register_proxy("flops")
def flops(model, ctx, metrics) -> float:
    return float(metrics["flops"]) if "flops" in metrics else float(count_flops(model, ctx.input_shape))
