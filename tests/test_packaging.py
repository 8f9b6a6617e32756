"""The package as a user installs it: every module must be in the wheel (not only in this tree)."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_copy_imports_every_module(tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    sources = {
        "robot_sac": ROOT / "robot_sac",
        "robot_sac.services": ROOT / "services",
        "robot_sac.sim": ROOT / "sim",
    }
    expected = []
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "services" in parts[:1] and package == "robot_sac":
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            expected.append(name)
    # -S: no site module, so no .pth file installs this checkout's editable finder; the
    # installed copy first, then the environment's other packages (torch, fastapi, ...).
    paths = [str(target), *site.getsitepackages()]
    code = (
        f"import sys; sys.path[:0] = {paths!r}\n"
        "import importlib\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "mine = [m.__file__ for n, m in list(sys.modules.items()) if n.startswith('robot_sac')]\n"
        "assert all(f is None or f.startswith(sys.path[0]) for f in mine), mine\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, *expected],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(expected) > 30
