"""Figures read from a service's ``/metrics`` (Prometheus text), with prometheus_client's parser.

prometheus_client comes with the service extra, which every command that reads metrics (`up`)
needs anyway; it is imported inside the functions so the CLI starts without it.
"""

from __future__ import annotations

# The histogram of act latencies the service keeps, by route.
ACT_LATENCY = "robot_sac_act_latency_seconds"


def histogram_buckets(text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """The cumulative buckets ``(le, count)`` of histogram ``name`` whose labels match, by le.

    Raises ValueError if the text is not Prometheus text.
    """
    from prometheus_client.parser import text_string_to_metric_families

    buckets = []
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                buckets.append((float(sample.labels["le"]), float(sample.value)))
    return sorted(buckets)


def quantile_bound(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the first bucket that holds a fraction ``q`` of the observations.

    ``None`` without observations; ``inf`` when it is past the last finite bucket. A bound, not an
    interpolation: the figure is at most this.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def act_latency_ms(text: str, route: str = "/v1/act") -> tuple[float, float] | None:
    """Bounds on the p50 and p99 act latency (ms) since the service started; ``None`` if none."""
    try:
        buckets = histogram_buckets(text, ACT_LATENCY, route=route)
    except ValueError:  # not Prometheus text (a proxy's error page, say)
        return None
    p50, p99 = quantile_bound(buckets, 0.5), quantile_bound(buckets, 0.99)
    if p50 is None or p99 is None:
        return None
    return p50 * 1e3, p99 * 1e3
