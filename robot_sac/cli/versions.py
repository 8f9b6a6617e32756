"""The version a tool command works on: a version file, or a version of a data directory's store.

``export-onnx`` and ``eval`` take ``FILE`` or ``--data-dir D [--version N]`` (default: the data
directory's newest version). Every way this can go wrong is one line on stderr and exit 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from robot_sac.cli.app import fail, refuse

if TYPE_CHECKING:  # torch comes with the policy: imported inside the function
    from robot_sac.policy import Policy
    from robot_sac.schemas import TaskSpec

FileArgument = Annotated[
    Path | None,
    typer.Argument(
        metavar="FILE",
        help="A version file (.safetensors). Without it: a version of --data-dir.",
        show_default=False,
    ),
]
VersionOption = Annotated[
    int | None,
    typer.Option(
        min=0, help="The version of --data-dir to use (default: its newest).", show_default=False
    ),
]


@dataclass(frozen=True)
class LoadedVersion:
    """A loaded version and where it came from.

    Attributes:
        policy: the validated policy; its safe action is the store's task's for a data directory.
        label: where it came from, for messages (``v7 of data``, ``policy.safetensors``).
        task: the task the store records, for a data directory; None for a file.
    """

    policy: Policy
    label: str
    task: TaskSpec | None


def default_data_dir() -> Path:
    """``ROBOT_SAC_DATA_DIR``, else ``data`` (Settings' default)."""
    return Path(os.environ.get("ROBOT_SAC_DATA_DIR") or "data")


def load_version(
    file: Path | None, data_dir: Path | None, version: int | None, spec: TaskSpec | None = None
) -> LoadedVersion:
    """The policy of ``file``, or version ``version`` (default: the newest) of ``data_dir``.

    With ``spec``, a version made for another task (sizes, bounds) is refused, and the safe
    action is the spec's when the version comes from a file.
    """
    from robot_sac.policy import PolicyFileError, load_policy

    if file is not None and data_dir is not None:
        raise refuse("give a version FILE or --data-dir, not both")
    if file is not None and version is not None:
        raise refuse("--version picks a version of --data-dir; a FILE is one version already")
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise refuse(f"cannot read {file}: {exc.strerror or exc}") from None
        try:
            policy = load_policy(data, spec=spec, safe_action=spec.safe_action if spec else None)
        except PolicyFileError as exc:
            raise refuse(f"{file} is not a usable robot_sac policy: {exc}") from None
        return LoadedVersion(policy, str(file), None)
    return _from_store(data_dir or default_data_dir(), version, spec)


def _from_store(data_dir: Path, version: int | None, spec: TaskSpec | None) -> LoadedVersion:
    from robot_sac.policy import PolicyFileError, load_policy
    from robot_sac.store import StoreError, open_existing

    try:
        store = open_existing(data_dir)
    except StoreError as exc:
        raise refuse(str(exc)) from None
    try:
        record = store.latest_policy() if version is None else store.get_policy(version)
        if record is None:
            versions = [r.version for r in store.list_policies()]
            if not versions:
                raise refuse(f"{data_dir} holds no policy versions yet")
            shown = ", ".join(str(v) for v in versions[-5:])
            raise refuse(
                f"{data_dir} has no version {version}; it holds {len(versions)} (newest: {shown})"
            )
        task = store.spec
        data = store.policy_bytes(record)
    except StoreError as exc:
        raise fail(f"cannot read {data_dir}: {exc}") from None
    finally:
        store.close()
    label = f"v{record.version} of {data_dir}"
    try:
        policy = load_policy(data, sha256=record.sha256, safe_action=task.safe_action, spec=spec)
    except PolicyFileError as exc:
        raise refuse(f"{label} is not usable: {exc}") from None
    return LoadedVersion(policy, label, task)
