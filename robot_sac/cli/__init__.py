"""The ``robot-sac`` command: the composition root of the project.

This is the one package of the core that may reach ``robot_sac.services`` and ``robot_sac.sim``,
and it does so only inside the commands that need them, so ``import robot_sac.cli`` stays light.

One module per concern: :mod:`~robot_sac.cli.app` (the typer app, shared options, ``main``),
:mod:`~robot_sac.cli.run` (serve, learn, sim), :mod:`~robot_sac.cli.up` (``up``, with
:mod:`~robot_sac.cli.live`; its parts run under :mod:`robot_sac.processes`),
:mod:`~robot_sac.cli.operate` (the operator's commands, over :mod:`~robot_sac.cli.admin_client`,
printed by :mod:`~robot_sac.cli.views`), :mod:`~robot_sac.cli.plot`,
:mod:`~robot_sac.cli.train_local`, :mod:`~robot_sac.cli.export` (export-onnx) and
:mod:`~robot_sac.cli.evaluate` (eval), the last two over :mod:`~robot_sac.cli.versions`;
:mod:`~robot_sac.cli.extras` says which extra a command needs where it is not installed.
"""

from __future__ import annotations

from robot_sac.cli.extras import cli_installed, guarded, light_main

if cli_installed():
    # Importing a command module registers its commands on `app`; this order is the help's order.
    # isort: off
    from robot_sac.cli import run, up, operate, plot, train_local, export, evaluate  # noqa: F401

    # isort: on
    from robot_sac.cli.app import DEFAULT_ENV, app
    from robot_sac.cli.app import main as app_main

    def main() -> None:
        """The console script: the app; a command whose extra is missing says so in one line."""
        guarded(app_main)

else:  # the robot's install (`pip install robot-sac`): no typer, only the extras' one lines

    def main() -> None:
        """The console script without the ``cli`` extra: which extra each command needs."""
        light_main()


__all__ = ["DEFAULT_ENV", "app", "main"]
