"""What `up` shows while it runs (a live table from the service's status) and when it ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from rich.console import Console
    from rich.table import Table

    from robot_sac.admin_schemas import StatusResponse
    from robot_sac.sim.fleet import Fleet


def fetch_status(url: str, token: str | None = None) -> StatusResponse | None:
    """The service's status, or ``None`` while it cannot be had (starting, stopping, busy);
    ``token``: an operator or viewer token, when the service has tokens."""
    from robot_sac.cli.admin_client import AdminClient, ServiceError

    try:
        with AdminClient(url, token, timeout=5.0) as client:
            return client.status().model
    except ServiceError:
        return None


def act_latency(url: str) -> tuple[float, float] | None:
    """Bounds on p50 and p99 of /v1/act in ms since the service started, from /metrics."""
    import httpx

    from robot_sac.cli.promtext import act_latency_ms

    try:
        return act_latency_ms(httpx.get(f"{url}/metrics", timeout=2.0).text)
    except httpx.HTTPError:
        return None


def latency_line(status: StatusResponse | None, url: str) -> str:
    """Act rate and latency over the last minute when the service reports its traffic; else the
    bounds from its latency histogram (since it started)."""
    traffic = None if status is None else status.traffic
    if traffic is not None:
        from robot_sac.cli.views import number

        return (
            f"{traffic.acts_per_s:.0f} acts/s · p50 {number(traffic.act_latency_p50_ms, '.2f')} ms"
            f" · p99 {number(traffic.act_latency_p99_ms, '.2f')} ms (last {traffic.window_s:.0f} s)"
        )
    latency = act_latency(url)
    if latency is None:
        return "-"
    return f"p50 ≤ {latency[0]:.2f} ms · p99 ≤ {latency[1]:.2f} ms"


def sources_note(status: StatusResponse) -> str:
    """`` (demo 80, human 40)`` when the log holds the expert's (or an operator's) transitions
    beside the policy's; empty when it is all the policy's (`up` without --demos/--intervene)."""
    counts = status.transitions_by_source or {}
    others = [f"{name} {counts[name]}" for name in ("demo", "human") if counts.get(name)]
    return f" ({', '.join(others)})" if others else ""


def view(url: str, task: str, token: str | None = None) -> Table:
    """One refresh of the live table."""
    from rich.table import Table

    status = fetch_status(url, token)
    table = Table(title=f"robot_sac · {task}", show_header=False, expand=False)
    if status is None:
        table.add_row("service", "not answering yet")
        return table
    learner = status.learner
    table.add_row("served version", str(status.served_version))
    if learner is not None:
        table.add_row(
            "learner",
            f"{learner.state} · {learner.updates} updates · {learner.updates_per_s:.0f}/s · "
            f"replay {learner.replay_size}",
        )
        if learner.utd_effective is not None and learner.utd:
            table.add_row(
                "update-to-data",
                f"{learner.utd_effective:.2f} achieved · target {learner.utd:g}"
                + (" (behind the robots)" if learner.utd_effective < 0.5 * learner.utd else ""),
            )
    table.add_row("transitions logged", f"{status.transitions}{sources_note(status)}")
    table.add_row("act latency", latency_line(status, url))
    for e in (status.episodes or [])[-5:]:
        success = "" if e.success_rate is None else f" · success {e.success_rate:.0%}"
        mean = "-" if e.mean_return is None else f"{e.mean_return:.2f}"
        table.add_row(f"version {e.version}", f"{e.episodes} episodes · return {mean}{success}")
    table.add_row("dashboard · API docs · metrics", f"{url}/ · {url}/docs · {url}/metrics")
    return table


def watch(
    console: Console,
    url: str,
    fleet: Fleet,
    procs: dict[str, subprocess.Popen[bytes]],
    task: str,
    token: str | None = None,
) -> None:
    """Refresh the live table until the robots are done; raise if a part exits on its own."""
    from rich.live import Live

    with Live(view(url, task, token), console=console, refresh_per_second=2) as live:
        while not fleet.done:
            fleet.reports()  # drained so the queue does not grow; the table reads the store
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited unexpectedly (code {proc.returncode})")
            live.update(view(url, task, token))
            time.sleep(0.5)
        live.update(view(url, task, token))
    if not console.is_terminal:  # a log file gets the last table without a line's end
        console.line()


def final_summary(status: StatusResponse, data_dir: Path, env: str) -> str:
    """What `up` did, and the commands that go on from here."""
    updates = None if status.learner is None else status.learner.updates
    lines = [
        f"done: {status.transitions} transitions logged{sources_note(status)}, {updates} updates, "
        f"newest version {status.latest_version}.",
    ]
    for e in (status.episodes or [])[-3:]:
        success = "" if e.success_rate is None else f", success {e.success_rate:.0%}"
        mean = "-" if e.mean_return is None else f"{e.mean_return:.2f}"
        lines.append(f"  version {e.version}: {e.episodes} episodes, mean return {mean}{success}")
    lines += [
        f"policies: {data_dir}/policies · learner checkpoint and TensorBoard: {data_dir}/learner",
        f"learning curve: robot-sac plot --data-dir {data_dir}",
        f"serve the newest version: robot-sac serve --env {env} --data-dir {data_dir}",
        f"resume training: robot-sac up --env {env} --data-dir {data_dir}",
    ]
    return "\n".join(lines)


def learner_caught_up(url: str, due_updates: int, slack: int, token: str | None = None) -> bool:
    """Whether the learner is online and has done ``due_updates`` (less ``slack``) by the
    service's status (online: it has started and stops cleanly when asked)."""
    status = fetch_status(url, token)
    if status is None or status.learner is None or status.learner.state == "offline":
        return False
    return status.learner.updates >= due_updates - slack
