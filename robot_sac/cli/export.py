"""``robot-sac export-onnx``: a version as an ONNX model of its deterministic action."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robot_sac.cli.app import TOOLS_PANEL, DataDirOption, app, fail, refuse
from robot_sac.cli.versions import FileArgument, VersionOption, load_version


@app.command("export-onnx", rich_help_panel=TOOLS_PANEL)
def export_onnx_command(
    file: FileArgument = None,
    data_dir: DataDirOption = None,
    version: VersionOption = None,
    out: Annotated[Path, typer.Option(help="The ONNX file to write.")] = Path("policy.onnx"),
) -> None:
    """Write a version as ONNX: observations (batch, obs_dim) to actions in robot units.

    The graph is the deterministic action exactly as the service answers it: the observation
    normalisation of the version (if any), the actor, the squashing into [-1, 1], the scaling to
    the task's action bounds, the safe action for a non-finite result and the clip into the
    bounds. Input `obs` and output `action`, float32; run it with onnxruntime or any ONNX runtime
    (opset 17). The version comes from FILE or from --data-dir (--version N, default: the newest).
    """
    from robot_sac.onnx_export import export_onnx

    loaded = load_version(file, data_dir, version)
    try:
        import onnx  # noqa: F401  (the export extra: checked before any work)
    except ImportError as exc:
        raise refuse(
            f"export-onnx needs the onnx package: pip install 'robot-sac[export]' ({exc})"
        ) from None
    try:
        size = export_onnx(loaded.policy, out)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}") from None
    info = loaded.policy.info
    norm = "with its observation normalisation" if loaded.policy.obs_norm else "raw observations"
    typer.echo(
        f"wrote {out} ({size / 1024:.0f} KiB): {loaded.label}, {info.family}, "
        f"obs {info.obs_dim} -> actions {info.action_dim}, {norm}"
    )
