"""Rich tables of the operator's answers: the status, the robots, the policy versions.

Pure functions of the typed answers (no HTTP), so what the commands print is decided here.
A figure the service did not give (the store away, no traffic yet) is shown as "-".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from rich.console import Group
from rich.table import Column, Table
from rich.text import Text

from robot_sac.admin_schemas import (
    LearnerView,
    PoliciesResponse,
    RobotsResponse,
    StatusResponse,
    TrafficView,
)

DASH = "-"
LEARNER_STYLE = {"running": "green", "paused": "yellow", "offline": "red", "faulted": "bold red"}


def number(value: float | int | None, fmt: str = ".3g") -> str:
    """A figure, or "-" when the service did not give it."""
    return DASH if value is None else format(value, fmt)


def timestamp(iso: str) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM`` UTC (the registry's own text if it is not ISO)."""
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M")


def serving_line(status: StatusResponse) -> str:
    """Which version is served and why: pinned (a rollback) or following the newest."""
    served = DASH if status.served_version is None else str(status.served_version)
    if status.mode == "pinned":
        return f"{served} (pinned to {status.pinned_version}; `robot-sac follow` serves the newest)"
    newest = "" if status.latest_version is None else f", newest {status.latest_version}"
    return f"{served} (following the newest{newest})"


def hold_text(status: StatusResponse) -> Text:
    """The hold, loud when it is on: every robot, or the robots held one by one."""
    stored = "" if status.hold_persisted else " (not stored yet: this replica only)"
    if status.hold:
        return Text(f"EVERY ROBOT HELD{stored}", style="bold red")
    if status.held_robots:
        return Text(f"held: {', '.join(sorted(status.held_robots))}{stored}", style="bold yellow")
    return Text(f"none{stored}")


def traffic_rows(traffic: TrafficView | None) -> Iterable[tuple[str, str]]:
    """This replica's rates and act latency over its recent window ("-" before it reports one)."""
    if traffic is None:
        yield "traffic", DASH
        return
    yield (
        "traffic",
        (
            f"{traffic.acts_per_s:.1f} acts/s · {traffic.transitions_per_s:.1f} transitions/s "
            f"(last {traffic.window_s:.0f} s)"
        ),
    )
    yield (
        "act latency",
        (
            f"p50 {number(traffic.act_latency_p50_ms, '.2f')} ms · "
            f"p99 {number(traffic.act_latency_p99_ms, '.2f')} ms"
        ),
    )


def learner_rows(learner: LearnerView | None) -> Iterable[tuple[str, str | Text]]:
    """The learner's rows; without the store (learner None) one row that says so."""
    if learner is None:
        yield "learner", "- (the store is unavailable)"
        return
    state = Text(learner.state, style=LEARNER_STYLE.get(learner.state, ""))
    if learner.phase and learner.phase != learner.state:  # e.g. running, waiting for data
        state.append(f" ({learner.phase})")
    if learner.fault:
        state.append(f" · {learner.fault}")
    yield "learner", state
    yield "updates", f"{learner.updates} ({learner.updates_per_s:.1f}/s)"
    yield "UTD effective", f"{number(learner.utd_effective)} (target {number(learner.utd)})"
    yield "alpha", number(learner.alpha)
    losses = " · ".join(
        f"{name.removeprefix('loss_')} {number(value)}" for name, value in learner.losses.items()
    )
    yield "losses", losses or DASH
    yield "replay size", str(learner.replay_size)


def status_view(status: StatusResponse, url: str) -> Group:
    """``robot-sac status``: one key/value table, then recent returns per version."""
    table = Table(title=f"robot_sac at {url}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if status.task is not None:
        table.add_row("task", status.task.name)
    table.add_row("served version", serving_line(status))
    table.add_row("mode", status.mode)
    table.add_row("hold", hold_text(status))
    for key, value in learner_rows(status.learner):
        table.add_row(key, value)
    # the operator's switch (the learner's own state above follows it within a second)
    table.add_row(
        "learner paused",
        Text("yes (`robot-sac resume`)", style="yellow") if status.learner_paused else "no",
    )
    table.add_row("transitions", number(status.transitions, "d"))
    by_source = status.transitions_by_source or {}
    if any(by_source.get(s) for s in ("human", "demo")):  # only when there is more than policy
        table.add_row("  by source", " · ".join(f"{k} {v}" for k, v in by_source.items()))
    for key, value in traffic_rows(status.traffic):
        table.add_row(key, value)
    store_state = str(status.store.get("state", DASH))
    reason = status.store.get("reason")
    table.add_row("store", f"{store_state}{f' ({reason})' if reason else ''}")
    table.add_row("uptime", f"{status.uptime_s:.0f} s")
    if status.refused_versions:
        refused = "; ".join(f"v{v}: {why}" for v, why in status.refused_versions.items())
        table.add_row("refused versions", Text(refused, style="red"))
    parts: list[Table] = [table]
    if status.episodes:
        episodes = Table("version", "episodes", "mean return", "success", title="recent episodes")
        for e in status.episodes[-5:]:
            episodes.add_row(
                str(e.version),
                str(e.episodes),
                number(e.mean_return, ".2f"),
                DASH if e.success_rate is None else f"{e.success_rate:.0%}",
            )
        parts.append(episodes)
    return Group(*parts)


def robots_view(robots: RobotsResponse) -> Table | Text:
    """``robot-sac robots``: one row per robot seen."""
    if not robots.robots:
        return Text("no robot has acted on this replica yet")
    table = Table(
        "robot",
        "held",
        "last act",
        "last\nversion",
        "acts",
        "episodes",
        "last\nreturn",
        "mean\nreturn",
        title="robots",
        title_justify="left",
    )
    for r in sorted(robots.robots, key=lambda r: r.robot_id):
        held = Text("alone", style="bold yellow") if r.held_alone else Text("")
        if r.held and not r.held_alone:
            held = Text("all held", style="bold red")
        table.add_row(
            r.robot_id,
            held,
            DASH if r.last_act_age_s is None else f"{r.last_act_age_s:.0f} s ago",
            number(r.last_version, "d"),
            str(r.acts),
            number(r.episodes, "d"),
            number(r.last_return, ".2f"),
            number(r.mean_return, ".2f"),
        )
    return table


def policies_view(policies: PoliciesResponse, status: StatusResponse) -> Table | Text:
    """``robot-sac policies``: every version, the served one marked ("served", or "pinned" when
    the operator pinned it).

    Success is the rate over the episodes a version drove (tasks with a success threshold). The
    refused column (why this replica will not serve a version) appears when a version was
    refused, so the usual table fits 80 columns.
    """
    if not policies.policies:
        return Text("no policy version is registered")
    versions = sorted(policies.policies, key=lambda p: p.version)
    pinned = status.pinned_version if status.mode == "pinned" else None
    how = "following the newest" if pinned is None else f"pinned to {pinned}"
    table = Table(
        "",
        "version",
        Column("created (UTC)", no_wrap=True),
        "updates",
        "episodes",
        "mean\nreturn",
        "success",
        title=f"policy versions · serving {number(status.served_version, 'd')}, {how}",
        title_justify="left",
    )
    with_refused = any(p.refused for p in versions)
    if with_refused:
        table.add_column("refused")
    for p in versions:
        mark = ""
        if p.version == pinned:
            mark = "pinned" if p.version == status.served_version else "pinned (not served)"
        elif p.version == status.served_version:
            mark = "served"
        cells: list[str | Text] = [
            Text(mark, style="bold green"),
            str(p.version),
            timestamp(p.created_at),
            str(p.updates),
            str(p.episodes),
            number(p.mean_episode_return, ".2f"),
            DASH if p.success_rate is None else f"{p.success_rate:.0%}",
        ]
        if with_refused:
            cells.append(Text(p.refused or "", style="red"))
        table.add_row(*cells)
    return table
