"""``robot-sac plot``: the learning curve of a data directory (or a fleet's store), as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from robot_sac.cli.app import TOOLS_PANEL, StoreUrlOption, app


@app.command(rich_help_panel=TOOLS_PANEL)
def plot(
    data_dir: Annotated[Path, typer.Option(help="A data directory of `up` or `serve`.")] = Path(
        "data"
    ),
    out: Annotated[
        Path | None, typer.Option(help="PNG to write (default: DATA_DIR/learning_curve.png).")
    ] = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Plot episode return (and success) against environment steps, one point per version.

    It reads the SQLite store in DATA_DIR, or the PostgreSQL store of a fleet (--store-url).
    """

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_sac.store import StoreError, open_existing

    url = store_url or os.environ.get("ROBOT_SAC_STORE_URL") or None
    try:
        store = open_existing(data_dir, url)
    except StoreError as exc:
        hint = "--store-url" if url else "--data-dir"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    try:
        episodes = {e.version: e for e in store.episodes_by_version(recent=0)}
        records = [r for r in store.list_policies() if r.version in episodes]
        steps = store.steps_at([r.registered_at for r in records])
        name = store.spec.name
    finally:
        store.close()
    if not records:
        raise typer.BadParameter(
            f"{'the store' if url else data_dir} holds no finished episodes yet",
            param_hint="--store-url" if url else "--data-dir",
        )
    has_success = any(episodes[r.version].success_rate is not None for r in records)
    fig, axes = plt.subplots(
        2 if has_success else 1, 1, figsize=(7, 6 if has_success else 3.5), sharex=True
    )
    axes = axes if has_success else [axes]
    axes[0].plot(steps, [episodes[r.version].mean_return for r in records], "o-", ms=3)
    axes[0].set_ylabel("mean episode return")
    axes[0].set_title(f"{name}: one point per policy version")
    if has_success:
        axes[1].plot(
            steps,
            [100 * (episodes[r.version].success_rate or 0) for r in records],
            "o-",
            ms=3,
            color="C2",
        )
        axes[1].set_ylabel("success (%)")
        axes[1].set_ylim(-5, 105)
    axes[-1].set_xlabel("environment steps logged when the version was published")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target = out or data_dir / "learning_curve.png"
    fig.savefig(target, dpi=120)
    typer.echo(f"wrote {target} ({len(records)} versions)")
    pruned = len(set(episodes) - {r.version for r in records})
    if pruned:
        typer.echo(
            f"{pruned} versions that drove episodes were deleted by retention and are not "
            "plotted (ROBOT_SAC_KEEP_VERSIONS, ROBOT_SAC_KEEP_EVERY keep more)"
        )
