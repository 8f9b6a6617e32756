"""``robot-sac eval``: a version's deterministic return and success on seeds training never used.

The version comes from a file, a data directory (``--version N``, default the newest) or a
running service (``--url``: what it serves, asked with ``"deterministic": true``). Episodes are
played in the simulator of ``--env`` with :func:`robot_sac.train_local.rollout`, episode ``i``
reset with seed ``--seed + i`` (default :data:`robot_sac.train_local.EVAL_SEED`, far from every
training seed), and ``--video`` records the first episodes as MP4 or GIF.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from robot_sac.cli.app import TOOLS_PANEL, DataDirOption, EnvOption, app, fail, refuse
from robot_sac.cli.versions import FileArgument, LoadedVersion, VersionOption, load_version
from robot_sac.quiet import c_output_silenced

if TYPE_CHECKING:
    import numpy as np

    from robot_sac.train_local import Episode


class _ServiceActor:
    """Acts through a running service, deterministic, and notes what it answered with."""

    def __init__(self, url: str, token: str | None) -> None:
        from robot_sac.client import RobotClient

        self.client = RobotClient(url, robot_id="eval", token=token, timeout_s=30.0)
        self.versions: set[int] = set()
        self.held = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        import numpy as np

        action, version, hold = self.client.act(obs.tolist(), deterministic=True)
        self.versions.add(version)
        self.held += bool(hold)
        return np.asarray(action, dtype=np.float32)

    def close(self) -> None:
        self.client.close()


@app.command("eval", rich_help_panel=TOOLS_PANEL)
def eval_command(
    file: FileArgument = None,
    env: EnvOption = None,
    data_dir: DataDirOption = None,
    version: VersionOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Evaluate what a running service serves (deterministic acts), not a stored "
            "version.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="ROBOT_SAC_ROBOT_TOKEN", help="Robot token for --url, if any."),
    ] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to play.")] = 20,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Seed of the first episode (episode i: seed + i). Default: 1,000,000 "
            "(robot_sac.train_local.EVAL_SEED), far from every seed training uses.",
            show_default=False,
        ),
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(
            help="Record the first episodes to this file: .mp4, or .gif.", show_default=False
        ),
    ] = None,
    video_episodes: Annotated[int, typer.Option(min=1, help="Episodes --video records.")] = 3,
    fps: Annotated[
        float | None,
        typer.Option(
            min=1.0, help="Frames per second of --video (default: the env's).", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Score a version's deterministic action on seeds training never used.

    The version comes from FILE, from --data-dir (--version N, default: the newest), or from a
    running service (--url: the version it serves). --env is the Gymnasium env to play in (with
    --data-dir, default: the store's task). Prints mean return, success rate (tasks that report
    one) and episode length; --video records the first --video-episodes episodes.
    """
    if url is not None and (file is not None or data_dir is not None or version is not None):
        raise refuse(
            "--url evaluates what the service serves: give no FILE, --data-dir or --version"
        )
    if video is not None and video.suffix.lower() not in (".mp4", ".gif"):
        raise refuse(f"--video {video}: give a .mp4 or .gif file")
    loaded = None if url is not None else load_version(file, data_dir, version)
    if seed is None:
        from robot_sac.train_local import EVAL_SEED

        seed = EVAL_SEED
    if env is None:
        if loaded is None or loaded.task is None:
            raise refuse("give --env ID: the Gymnasium env to evaluate in")
        env = loaded.task.name
    with c_output_silenced(1):
        results = _play(env, loaded, url, token, episodes, seed, video, video_episodes, fps)
    summary = _summary(env, loaded, url, seed, results)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_summary(summary)


def _make_env(env_id: str, video: bool) -> Any:
    try:
        from robot_sac.sim.envs import make_env
    except ImportError as exc:
        raise refuse(f"eval needs the simulators: pip install 'robot-sac[sim]' ({exc})") from None
    kwargs: dict[str, Any] = {}
    if video:
        from robot_sac.sim.video import render_kwargs

        try:
            import imageio  # noqa: F401  (checked before any episode is played)
        except ImportError as exc:
            raise refuse(f"--video needs imageio: pip install 'robot-sac[video]' ({exc})") from None
        kwargs = render_kwargs(env_id)
    try:
        with c_output_silenced(2):  # PyBullet's build time, printed when it is imported
            return make_env(env_id, **kwargs)
    except Exception as exc:  # gymnasium raises several types for an unknown or broken id
        raise refuse(f"cannot make Gymnasium env {env_id!r}: {exc}") from None


def _play(
    env_id: str,
    loaded: LoadedVersion | None,
    url: str | None,
    token: str | None,
    episodes: int,
    seed: int,
    video: Path | None,
    video_episodes: int,
    fps: float | None,
) -> dict[str, Any]:
    """Play the episodes; returns the episodes and what the run learnt on the way."""
    from robot_sac.policy import PolicyFileError, check_task
    from robot_sac.sim.envs import task_spec_from_env

    env = _make_env(env_id, video is not None)
    service: _ServiceActor | None = None
    try:
        try:
            spec = task_spec_from_env(env, name=env_id)
        except ValueError as exc:
            raise refuse(f"{env_id}: {exc}") from None
        act: Callable[[np.ndarray], np.ndarray]
        if loaded is not None:
            try:
                check_task(loaded.policy.info, spec)
            except PolicyFileError as exc:
                raise refuse(f"{loaded.label} does not fit {env_id}: {exc}") from None
            policy = loaded.policy

            def act(obs: np.ndarray) -> np.ndarray:
                return policy.act(obs, deterministic=True)  # type: ignore[no-any-return]

        else:
            assert url is not None
            service = _ServiceActor(url, token)
            act = service
        recorder = None
        if video is not None:
            from robot_sac.sim.video import FrameRecorder

            env = recorder = FrameRecorder(env, min(video_episodes, episodes))
        played = _rollouts(act, env, episodes, seed, url)
        out: dict[str, Any] = {"episodes": played}
        if service is not None:
            out["served_versions"] = sorted(service.versions)
            out["held_acts"] = service.held
        if recorder is not None:
            assert video is not None
            from robot_sac.sim.video import write_video

            rate = fps or float(env.metadata.get("render_fps") or 25)
            try:
                write_video(video, recorder.frames, rate)
            except (OSError, RuntimeError, ValueError) as exc:
                raise fail(f"cannot write {video}: {exc}") from None
            out["video"] = {
                "path": str(video),
                "episodes": len(recorder.episode_frames),
                "frames": len(recorder.frames),
                "fps": rate,
            }
        return out
    finally:
        if service is not None:
            service.close()
        env.close()


def _rollouts(
    act: Callable[[np.ndarray], np.ndarray], env: Any, episodes: int, seed: int, url: str | None
) -> list[Episode]:
    """:func:`~robot_sac.train_local.rollout`, one episode at a time under a progress bar (on
    stderr); a service that cannot be reached or refuses is one line."""
    import httpx
    from rich.console import Console
    from rich.progress import Progress

    from robot_sac.client import ServiceError
    from robot_sac.sim.video import RenderError  # gymnasium is loaded already; imageio is not
    from robot_sac.train_local import rollout

    played: list[Episode] = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("episodes", total=episodes)
        for i in range(episodes):
            try:
                played += rollout(act, env, 1, seed + i)  # episode i: seed + i, as rollout does
            except ServiceError as exc:
                raise fail(f"the service at {url} refused an act: {exc}") from None
            except httpx.HTTPError as exc:
                raise fail(f"cannot reach the service at {url}: {exc}") from None
            except RenderError as exc:
                raise fail(f"--video: {exc}") from None
            bar.advance(task)
    return played


def _summary(
    env_id: str, loaded: LoadedVersion | None, url: str | None, seed: int, results: dict[str, Any]
) -> dict[str, Any]:
    import numpy as np

    played: list[Episode] = results["episodes"]
    returns = [e.return_ for e in played]
    successes = [e.success for e in played]
    reported = [s for s in successes if s is not None]
    summary: dict[str, Any] = {
        "env": env_id,
        "policy": url if loaded is None else loaded.label,
        "version": None if loaded is None else loaded.policy.version,
        "deterministic": True,
        "episodes": len(played),
        "first_seed": seed,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "min_return": float(np.min(returns)),
        "max_return": float(np.max(returns)),
        "success_rate": float(np.mean(reported)) if reported else None,
        "mean_length": float(np.mean([e.length for e in played])),
        "returns": returns,
        "successes": successes,
        "lengths": [e.length for e in played],
    }
    for key in ("served_versions", "held_acts", "video"):
        if key in results:
            summary[key] = results[key]
    if loaded is None and len(results["served_versions"]) == 1:
        summary["version"] = results["served_versions"][0]
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    last = s["first_seed"] + s["episodes"] - 1
    console.print(
        f"[bold]eval[/] {s['env']}: {s['policy']}, deterministic, {s['episodes']} episodes "
        f"(seeds {s['first_seed']}..{last})"
    )
    if "served_versions" in s:
        versions = ", ".join(f"v{v}" for v in s["served_versions"])
        console.print(f"  served    {versions}")
        if s["held_acts"]:
            console.print(
                f"  [yellow]held[/]      {s['held_acts']} acts answered the safe action (a hold)"
            )
    console.print(
        f"  return    {s['mean_return']:.3f} ± {s['std_return']:.3f} "
        f"(min {s['min_return']:.3f}, max {s['max_return']:.3f})"
    )
    if s["success_rate"] is not None:
        wins = sum(1 for x in s["successes"] if x)
        console.print(f"  success   {s['success_rate']:.0%} ({wins}/{s['episodes']})")
    console.print(f"  length    {s['mean_length']:.1f} steps")
    if "video" in s:
        v = s["video"]
        console.print(
            f"  video     {v['path']} ({v['episodes']} episodes, {v['frames']} frames, "
            f"{v['fps']:g} fps)"
        )
