"""Prometheus metrics of one service instance (its own registry: no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "robot_sac_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.act_latency = Histogram(
            "robot_sac_act_latency_seconds",
            "Time from an act request's arrival to its answer.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "robot_sac_batch_size",
            "Observations per forward pass.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.forward_passes = Counter(
            "robot_sac_forward_passes", "Forward passes of the served policy.", registry=r
        )
        self.served_version = Gauge(
            "robot_sac_served_version", "Version of the policy being served.", registry=r
        )
        self.swaps = Counter("robot_sac_policy_swaps", "Policy versions swapped in.", registry=r)
        self.refused = Counter(
            "robot_sac_policy_versions_refused",
            "Policy versions that failed validation and were never served.",
            registry=r,
        )
        self.transitions_accepted = Counter(
            "robot_sac_transitions_accepted", "Transitions stored.", registry=r
        )
        self.transitions_duplicates = Counter(
            "robot_sac_transitions_duplicates",
            "Transitions received again (retries) and not stored twice.",
            registry=r,
        )
        self.nonfinite_actions = Counter(
            "robot_sac_nonfinite_actions_replaced",
            "Actions the policy produced non-finite, answered with the safe action instead.",
            registry=r,
        )
        self.hold = Gauge(
            "robot_sac_hold", "1 while every act answers the safe action.", registry=r
        )
        self._children: dict[tuple[str, ...], Any] = {}

    # Looking a labelled child up costs a lock and a dict per call; the hot paths keep them.
    def request_counter(self, route: str, status: str) -> Any:
        key = ("requests", route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(route, status)
        return child

    def act_latency_of(self, route: str) -> Any:
        key = ("act_latency", route)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.act_latency.labels(route)
        return child
