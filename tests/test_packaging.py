"""The package as a user installs it: every module must be in the wheel (not only in this tree)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# What a clean clone does not have: a build here (build/, *.egg-info) would let setuptools reuse
# the file lists of an earlier build, and ship files the configuration no longer names.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "data"
)


def test_an_installed_copy_imports_every_module(tmp_path: Path):
    target = tmp_path / "site"
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
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
            str(clone),
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
    # The files the service serves from the package: the docs' assets and the dashboard.
    static = target / "robot_sac" / "services" / "inference" / "static"
    for name in ("swagger-ui-bundle.js", "redoc.standalone.js"):
        assert (static / name).is_file(), name
    for name in ("index.html", "dashboard.js", "dashboard.css", "favicon.svg"):
        assert (static / "dashboard" / name).is_file(), name
