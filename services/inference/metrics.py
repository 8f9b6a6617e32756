"""Prometheus metrics of one service instance (its own registry: no process-global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from robot_sac.admin_schemas import LearnerStatus
from robot_sac.store import VersionEpisodes

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
        self.held_robots = Gauge(
            "robot_sac_held_robots",
            "Robots held one by one (besides the hold for every robot).",
            registry=r,
        )
        self.hold_persisted = Gauge(
            "robot_sac_hold_persisted",
            "1 when the store holds the hold state acts answer with; 0 while a hold pressed "
            "here is still being written.",
            registry=r,
        )
        self.hold_persisted.set(1.0)
        self.rate_limited = Counter(
            "robot_sac_rate_limited",
            "Requests refused with 429: their token was over its rate.",
            registry=r,
        )
        self.acts_shed = Counter(
            "robot_sac_acts_shed",
            "Acts answered 503 at once because the act queue was full.",
            registry=r,
        )
        self.acts_late = Counter(
            "robot_sac_acts_deadline_missed",
            "Acts answered 504: they could not be answered before their X-Deadline-Ms.",
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def watch_learner(self, learner_status: Callable[[], LearnerStatus | None]) -> None:
        """Expose the learner's status row (read from the store at each scrape) as gauges."""
        self.registry.register(_LearnerCollector(learner_status))

    def watch_episodes(self, episodes: Callable[[], list[VersionEpisodes]]) -> None:
        """Expose episode return (and success) of the newest versions, read at each scrape."""
        self.registry.register(_EpisodeCollector(episodes))

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


class _LearnerCollector(Collector):
    """The learner's gauges, so one scrape of the service shows the whole system.

    Each is ``robot_sac_learner_<name>``, from the status field of its key in :data:`GAUGES`
    (left out while that field is null, e.g. ``utd_effective`` with no new data).
    ``robot_sac_learner_data_age_seconds`` is the learner's ``data_age_s`` plus the age of its
    heartbeat: how stale its view of the log is at the scrape, growing on while it is down.
    """

    # status field -> (metric name after robot_sac_learner_, help)
    GAUGES: ClassVar[dict[str, tuple[str, str]]] = {
        "updates": ("updates", "SAC updates done by the learner."),
        "updates_per_s": ("updates_per_second", "Learner updates per second."),
        "env_steps": ("env_steps", "Environment steps (log transitions) the learner consumed."),
        "replay_size": ("replay_size", "Transitions in the learner's replay buffer."),
        "utd": ("utd", "Configured update-to-data ratio (0: as fast as the machine allows)."),
        "utd_effective": (
            "utd_effective",
            "Updates per transition consumed over about the last 30 s (absent with no new data).",
        ),
        "alpha": ("alpha", "SAC temperature."),
        "entropy": ("entropy", "Policy entropy on the last batch."),
        "q_mean": ("q_mean", "Mean Q-value on the last batch."),
        "data_age_updates": (
            "data_age_updates",
            "Updates between the versions that produced the newest data and now.",
        ),
        "quarantined_rows": (
            "quarantined_rows",
            "Log rows the learner set aside: values that would overflow learning.",
        ),
        "skipped_updates": (
            "skipped_updates",
            "Optimiser steps skipped because their gradients were not finite.",
        ),
        "rollbacks": ("rollbacks", "Times the learner went back to its last good weights."),
    }

    def __init__(self, learner_status: Callable[[], LearnerStatus | None]) -> None:
        self.learner_status = learner_status

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to declare at registration

    def collect(self) -> Iterator[Any]:
        status = self.learner_status()
        age = None if status is None else time.time() - status.heartbeat
        up = GaugeMetricFamily("robot_sac_learner_up", "1 while the learner's heartbeat is fresh.")
        up.add_metric([], 1.0 if age is not None and age <= 5.0 else 0.0)
        yield up
        if status is None:
            return
        heartbeat = GaugeMetricFamily(
            "robot_sac_learner_heartbeat_age_seconds", "Seconds since the learner's last status."
        )
        assert age is not None  # a status row has a heartbeat
        heartbeat.add_metric([], age)
        yield heartbeat
        faulted = GaugeMetricFamily(
            "robot_sac_learner_faulted", "1 while the learner reports that it cannot go on."
        )
        faulted.add_metric([], 1.0 if status.state == "faulted" else 0.0)
        yield faulted
        for key, (name, doc) in self.GAUGES.items():
            value = getattr(status, key)
            if isinstance(value, int | float):
                family = GaugeMetricFamily(f"robot_sac_learner_{name}", doc)
                family.add_metric([], float(value))
                yield family
        data_age = status.data_age_s
        if isinstance(data_age, int | float):
            stale = GaugeMetricFamily(
                "robot_sac_learner_data_age_seconds",
                "Seconds since the learner last had every transition the log held (its "
                "last read that found no more rows), as of this scrape.",
            )
            stale.add_metric([], float(data_age) + max(0.0, age))
            yield stale
        losses = GaugeMetricFamily(
            "robot_sac_learner_loss", "The learner's last losses.", labels=["loss"]
        )
        for name, value in status.losses.items():
            if isinstance(value, int | float):  # a skipped update's non-finite loss is null
                losses.add_metric([name], float(value))
        yield losses


class _EpisodeCollector(Collector):
    """Episode return, success and count of the :data:`VERSIONS` newest versions that drove
    episodes, labelled by version (a bounded set of series: older versions drop out)."""

    VERSIONS = 10

    def __init__(self, episodes: Callable[[], list[VersionEpisodes]]) -> None:
        self.episodes = episodes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        newest = self.episodes()[-self.VERSIONS :]
        mean = GaugeMetricFamily(
            "robot_sac_episode_return",
            "Mean return of the episodes each version drove (the newest versions).",
            labels=["version"],
        )
        count = GaugeMetricFamily(
            "robot_sac_episodes",
            "Episodes each version drove (the newest versions).",
            labels=["version"],
        )
        success = GaugeMetricFamily(
            "robot_sac_episode_success_rate",
            "Share of each version's episodes that met the task's success threshold.",
            labels=["version"],
        )
        for e in newest:
            label = [str(e.version)]
            count.add_metric(label, float(e.episodes))
            if e.mean_return is not None:
                mean.add_metric(label, float(e.mean_return))
            if e.success_rate is not None:
                success.add_metric(label, float(e.success_rate))
        yield mean
        yield count
        yield success
