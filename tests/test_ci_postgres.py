""".ci/start-postgres, which CI runs before the tests: every branch, on stand-ins for the
PostgreSQL tools (the machine's real server is never stopped or started here; the branch where it
is already up also runs for real)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "start-postgres"

STUBS = {
    # up once the state file says so; "starting" answers 1 (pg_isready's "rejecting")
    "pg_isready": """
state=$(cat "$STUB/state")
case "$state" in up) exit 0;; starting) echo up > "$STUB/state"; exit 1;; *) exit 2;; esac
""",
    "pg_lsclusters": """
echo "14 old 5433 down postgres /var/lib/postgresql/14/old /var/log/postgresql/old.log"
[ -f "$STUB/no-cluster" ] || \
  echo "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/main.log"
""",
    "pg_ctlcluster": """
echo "pg_ctlcluster $*" >> "$STUB/calls"
[ -f "$STUB/never-up" ] || echo up > "$STUB/state"
""",
    "sudo": """
echo "sudo $*" >> "$STUB/calls"
while [ "${1#-}" != "$1" ]; do [ "$1" = -u ] && shift; shift; done
exec "$@"
""",
    "psql": """
echo "psql $*" >> "$STUB/calls"
case "$*" in *"SELECT 1 FROM pg_database"*) [ -f "$STUB/no-test-db" ] || echo 1;; esac
""",
    "id": """
case "$1" in -u) echo "$STUB_UID";; -un) echo "$STUB_USER";; esac
""",
    "stat": "echo postgres",
    "sleep": "true",
}


@pytest.fixture
def stub(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body.lstrip())
        path.chmod(0o755)
    for tool in ("bash", "awk", "cat"):  # all the script needs besides the stand-ins
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (tmp_path / "state").write_text("down\n")
    return tmp_path


def run(stub: Path, uid: int = 0, user: str = "root", with_sudo: bool = True, **env: str):
    if not with_sudo:
        (stub / "bin" / "sudo").unlink()
    done = subprocess.run(
        [str(SCRIPT)],
        env={
            "PATH": str(stub / "bin"),
            "STUB": str(stub),
            "STUB_UID": str(uid),
            "STUB_USER": user,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls_file = stub / "calls"
    calls = calls_file.read_text().splitlines() if calls_file.exists() else []
    return done, calls


START = "pg_ctlcluster --skip-systemctl-redirect 15 main start"


def test_already_up_starts_nothing(stub: Path):
    (stub / "state").write_text("up\n")
    done, calls = run(stub)
    assert done.returncode == 0, done.stderr
    assert "is up" in done.stdout
    assert not any(c.startswith(("pg_ctlcluster", "sudo")) for c in calls)
    assert not any("CREATE DATABASE" in c for c in calls)


def test_starting_up_is_waited_for_not_started_again(stub: Path):
    (stub / "state").write_text("starting\n")
    done, calls = run(stub)
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith("pg_ctlcluster") for c in calls)


def test_down_as_root_starts_the_cluster_on_port_5432_and_creates_test(stub: Path):
    (stub / "no-test-db").touch()
    done, calls = run(stub)
    assert done.returncode == 0, done.stderr
    assert calls[0] == START  # the 5432 cluster, not the other one; no sudo
    assert any("CREATE DATABASE test" in c for c in calls)


def test_down_as_the_owner_starts_it_without_sudo(stub: Path):
    done, calls = run(stub, uid=105, user="postgres")
    assert done.returncode == 0, done.stderr
    assert calls[0] == START


def test_down_as_someone_else_uses_sudo(stub: Path):
    done, calls = run(stub, uid=1000, user="ci")
    assert done.returncode == 0, done.stderr
    assert calls[:2] == [f"sudo -n {START}", START]


def test_down_without_rights_says_what_to_run(stub: Path):
    done, calls = run(stub, uid=1000, user="ci", with_sudo=False)
    assert done.returncode == 1
    assert START in done.stderr
    assert not any(c.startswith("pg_ctlcluster") for c in calls)


def test_no_cluster_on_the_port_is_a_clear_error(stub: Path):
    (stub / "no-cluster").touch()
    done, _ = run(stub)
    assert done.returncode == 1
    assert "no cluster" in done.stderr


def test_a_server_that_never_comes_up_fails_after_the_wait(stub: Path):
    (stub / "never-up").touch()
    done, calls = run(stub, PG_START_WAIT_S="3")
    assert done.returncode == 1
    assert calls == [START]
    assert "did not accept connections" in done.stderr


@pytest.mark.skipif(not shutil.which("pg_isready"), reason="PostgreSQL client tools not installed")
def test_the_real_server_is_up_and_left_alone():
    done = subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert "is up on 127.0.0.1:5432" in done.stdout
