"""Make docs/up.svg: `robot-sac up`'s live display, captured from a real run.

Runs ``robot-sac up --steps 3000`` on the default task, and once 2,500 transitions are logged
renders the same table the terminal shows (``robot_sac.cli.live.view``) into an SVG.

    .venv/bin/python docs/up_screenshot.py          # about 2 minutes on a 2-core CPU
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from robot_sac.cli.live import fetch_status, view
from robot_sac.processes import free_port

OUT = Path(__file__).resolve().parent / "up.svg"
TASK = "PandaReachDense-v3"


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        cmd = [sys.executable, "-m", "robot_sac.cli", "up", "--steps", "3000"]
        up = subprocess.Popen(
            [*cmd, "--data-dir", data, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while up.poll() is None:
                status = fetch_status(url)
                if status is not None and status.transitions >= 2500:
                    console = Console(record=True, width=104, file=io.StringIO())
                    console.print(view(url, TASK))
                    console.save_svg(str(OUT), title="robot-sac up")
                    print(f"wrote {OUT}")
                    break
                time.sleep(0.5)
        finally:
            up.wait()


if __name__ == "__main__":
    main()
