"""The operator's commands (`robot-sac status | robots | policies | pin | follow | hold | release |
pause | resume | upload`) as an operator runs them: a real `robot-sac` process against a real
service (`robot-sac serve` in a subprocess, with tokens) over loopback. Each effect is checked
through the API, not only through what the command printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from robot_sac.admin_schemas import (
    PoliciesResponse,
    RobotsResponse,
    StatusResponse,
    UploadResponse,
)
from robot_sac.cli.promtext import act_latency_ms
from tests.servers import (
    CHEETAH,
    OPERATOR_TOKEN,
    ROBOT_TOKEN,
    ProcessService,
    StoreLock,
    free_port,
    transition,
    write_task,
)

VIEWER_TOKEN = "viewer-secret-token"
OBS = [0.0] * CHEETAH.obs_dim


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessService]:
    """One service for the module (starting one takes seconds); each test puts back what it
    changed (see `reset`)."""
    root = tmp_path_factory.mktemp("operator")
    service = ProcessService(
        root / "data",
        write_task(root / "task.json"),
        ROBOT_SAC_ROBOT_TOKEN=ROBOT_TOKEN,
        ROBOT_SAC_OPERATOR_TOKEN=OPERATOR_TOKEN,
        ROBOT_SAC_VIEWER_TOKEN=VIEWER_TOKEN,
        ROBOT_SAC_STORE_WAIT_S="0.5",  # a busy store is a 503 within half a second
    ).start()
    yield service
    service.terminate()


@pytest.fixture(scope="module")
def api(svc: ProcessService) -> Iterator[httpx.Client]:
    """The operator's HTTP view of the service: what the tests check the commands against."""
    with httpx.Client(
        base_url=svc.url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def reset(api: httpx.Client) -> Iterator[None]:
    """After each test: follow the newest, nobody held, the learner not paused."""
    yield
    for robot in api.get("/v1/admin/status").json().get("held_robots", []):
        api.post("/v1/admin/release", json={"robot_id": robot})
    for path in ("/v1/admin/policy/follow", "/v1/admin/release", "/v1/admin/learner/resume"):
        assert api.post(path).status_code == 200, path


def cli(
    svc: ProcessService, *args: str, token: str | None = OPERATOR_TOKEN, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m robot_sac.cli ARGS --url <svc>`` with no ROBOT_SAC_* of this environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROBOT_SAC_")}
    cmd = [sys.executable, "-m", "robot_sac.cli", *args]
    if "ROBOT_SAC_URL" not in env:
        cmd += ["--url", svc.url]
    if token is not None:
        cmd += ["--token", token]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "200", **env},  # wide: no cell of a table wraps
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The failure as an operator sees it: exit != 0, one line on stderr, no traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("robot-sac: "), lines[0]
    return lines[0]


def rows(out: str) -> list[list[str]]:
    """The cells of every table row a command printed (rich's box characters split them)."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in out.splitlines()
        if line.count("│") >= 2
    ]


def status_table(out: str) -> dict[str, str]:
    """`robot-sac status`'s key/value rows."""
    return {row[0]: row[1] for row in rows(out) if len(row) == 2}


def status(api: httpx.Client) -> StatusResponse:
    return StatusResponse.model_validate(api.get("/v1/admin/status").json())


def upload_copy_of_served(svc: ProcessService, api: httpx.Client, tmp_path: Path) -> int:
    """Upload the served version's file again (a valid version file) with the CLI: its number."""
    path = tmp_path / "copy.safetensors"
    path.write_bytes(api.get("/v1/policy/weights").content)
    out = ok(cli(svc, "upload", str(path), "--json"))
    return UploadResponse.model_validate_json(out).version


def act(svc: ProcessService, robot_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"obs": OBS, **({"robot_id": robot_id} if robot_id else {})}
    r = httpx.post(
        f"{svc.url}/v1/act",
        json=body,
        headers={"Authorization": f"Bearer {ROBOT_TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


# === looking ======================================================================================


def test_status_shows_the_served_version_mode_and_hold(svc: ProcessService, api: httpx.Client):
    served = status(api).served_version
    assert served is not None
    act(svc)  # traffic to report
    table = status_table(ok(cli(svc, "status")))
    assert table["served version"] == f"{served} (following the newest, newest {served})"
    assert table["mode"] == "follow" and table["hold"] == "none"
    assert table["learner"] == "offline"  # no learner runs in this test
    assert table["learner paused"] == "no"
    assert table["transitions"] == "0"
    assert "acts/s" in table["traffic"] and table["act latency"].startswith("p50 ")


def test_status_json_is_the_service_answer(svc: ProcessService, api: httpx.Client):
    answer = json.loads(ok(cli(svc, "status", "--json")))
    parsed = StatusResponse.model_validate(answer)
    assert parsed.served_version == status(api).served_version
    assert parsed.mode == "follow" and parsed.hold is False


def test_url_and_token_come_from_the_environment(svc: ProcessService):
    done = cli(
        svc, "status", "--json", token=None, ROBOT_SAC_URL=svc.url, ROBOT_SAC_TOKEN=OPERATOR_TOKEN
    )
    assert StatusResponse.model_validate_json(ok(done)).mode == "follow"


def test_a_viewer_token_reads_but_cannot_act(svc: ProcessService, api: httpx.Client):
    ok(cli(svc, "status", token=VIEWER_TOKEN))
    ok(cli(svc, "policies", token=VIEWER_TOKEN))
    line = one_line_error(cli(svc, "hold", token=VIEWER_TOKEN))
    assert "the token was refused (403)" in line
    assert status(api).hold is False


# === versions =====================================================================================


def test_upload_registers_a_new_version_that_policies_lists(
    svc: ProcessService, api: httpx.Client, tmp_path: Path
):
    before = PoliciesResponse.model_validate(api.get("/v1/admin/policies").json())
    path = tmp_path / "v.safetensors"
    path.write_bytes(api.get("/v1/policy/weights").content)
    out = ok(cli(svc, "upload", str(path)))
    newest = max(p.version for p in before.policies) + 1
    assert f"as version {newest}" in out
    listed = PoliciesResponse.model_validate_json(ok(cli(svc, "policies", "--json")))
    assert newest in {p.version for p in listed.policies}
    assert len(listed.policies) == len(before.policies) + 1
    assert str(newest) in {row[1] for row in rows(ok(cli(svc, "policies")))}


def test_pin_an_older_version_then_follow(svc: ProcessService, api: httpx.Client, tmp_path: Path):
    newest = upload_copy_of_served(svc, api, tmp_path)
    older = newest - 1
    out = ok(cli(svc, "pin", str(older)))
    assert f"serving version {older}, pinned" in out
    now = status(api)
    assert (now.mode, now.pinned_version, now.served_version) == ("pinned", older, older)
    table = status_table(ok(cli(svc, "status")))
    assert table["served version"].startswith(f"{older} (pinned to {older};")
    assert table["mode"] == "pinned"
    marks = {row[1]: row[0] for row in rows(ok(cli(svc, "policies")))}
    assert marks[str(older)] == "pinned" and marks[str(newest)] == ""
    assert act(svc)["policy_version"] == older

    out = ok(cli(svc, "follow"))
    now = status(api)
    assert now.mode == "follow" and now.pinned_version is None
    assert now.served_version == now.latest_version and now.served_version is not None
    assert f"serving {now.served_version}" in out


def test_pin_an_unknown_version_says_what_the_service_said(svc: ProcessService, api: httpx.Client):
    line = one_line_error(cli(svc, "pin", "999999"))
    assert "(404)" in line and "policy version 999999 does not exist" in line
    assert status(api).mode == "follow"


def test_upload_of_a_bad_file_is_one_line_and_registers_nothing(
    svc: ProcessService, api: httpx.Client, tmp_path: Path
):
    before = api.get("/v1/admin/policies").json()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    line = one_line_error(cli(svc, "upload", str(bad)))
    assert "(422)" in line
    assert api.get("/v1/admin/policies").json() == before
    line = one_line_error(cli(svc, "upload", str(tmp_path / "missing.safetensors")))
    assert "cannot read" in line and "missing.safetensors" in line


# === controls =====================================================================================


def test_hold_every_robot_then_release(svc: ProcessService, api: httpx.Client):
    out = ok(cli(svc, "hold"))
    assert "holding every robot" in out
    assert status(api).hold is True
    assert act(svc)["hold"] is True
    assert status_table(ok(cli(svc, "status")))["hold"] == "EVERY ROBOT HELD"

    out = ok(cli(svc, "release"))
    assert "released the hold for every robot" in out
    assert status(api).hold is False
    assert act(svc)["hold"] is False


def test_pause_and_resume_the_learner(svc: ProcessService, api: httpx.Client):
    assert "learner paused" in ok(cli(svc, "pause"))
    assert status(api).learner_paused is True
    assert status_table(ok(cli(svc, "status")))["learner paused"].startswith("yes")
    assert "learner resumed" in ok(cli(svc, "resume"))
    assert status(api).learner_paused is False


def test_every_control_prints_the_service_json_with_json(svc: ProcessService, api: httpx.Client):
    for args, check in (
        (["hold"], lambda s: s.hold is True),
        (["release"], lambda s: s.hold is False),
        (["pause"], lambda s: s.learner_paused is True),
        (["resume"], lambda s: s.learner_paused is False),
        (["pin", "0"], lambda s: s.mode == "pinned" and s.served_version == 0),
        (["follow"], lambda s: s.mode == "follow"),
    ):
        answer = StatusResponse.model_validate_json(ok(cli(svc, *args, "--json")))
        assert check(answer), (args, answer)
        assert check(status(api)), args


# === per robot ====================================================================================


def test_hold_and_release_one_robot(svc: ProcessService, api: httpx.Client):
    act(svc, "arm-1")
    act(svc, "arm-2")
    out = ok(cli(svc, "hold", "arm-1"))
    assert "holding arm-1" in out
    now = status(api)
    assert now.hold is False and now.held_robots == ["arm-1"]
    assert act(svc, "arm-1")["hold"] is True
    assert act(svc, "arm-2")["hold"] is False

    robots = RobotsResponse.model_validate_json(ok(cli(svc, "robots", "--json")))
    held = {r.robot_id: (r.held, r.held_alone) for r in robots.robots}
    assert held["arm-1"] == (True, True) and held["arm-2"] == (False, False)
    table = {row[0]: row[1] for row in rows(ok(cli(svc, "robots")))}
    assert table["arm-1"] == "alone" and table["arm-2"] == ""

    out = ok(cli(svc, "release", "arm-1"))
    assert "released arm-1" in out
    assert status(api).held_robots == []
    assert act(svc, "arm-1")["hold"] is False


def test_releasing_every_robot_leaves_the_ones_held_by_name(svc: ProcessService, api: httpx.Client):
    ok(cli(svc, "hold"))
    ok(cli(svc, "hold", "arm-3"))
    out = ok(cli(svc, "release"))
    assert "still held one by one: arm-3" in out
    now = status(api)
    assert now.hold is False and now.held_robots == ["arm-3"]


# === failures =====================================================================================


def test_a_wrong_token_is_one_line(svc: ProcessService):
    line = one_line_error(cli(svc, "status", token="not-the-operator-token"))
    assert "the token was refused (401)" in line
    line = one_line_error(cli(svc, "status", token=None))
    assert "the token was refused (401)" in line and "--token" in line


def test_an_unreachable_service_is_one_line(svc: ProcessService):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(cli(svc, "status", ROBOT_SAC_URL=url))
    assert line == f"robot-sac: cannot reach {url}: connection refused (is the service running?)"


def test_a_busy_store_says_unavailable_and_retry(svc: ProcessService, api: httpx.Client):
    # Another process holds the SQLite store's write lock: reads go on (WAL), writes wait.
    lock = StoreLock(svc.data_dir / "store.sqlite")
    try:
        # the hold does not wait for the store: it holds at once and says it is not stored yet
        out = ok(cli(svc, "hold"))
        assert "holding every robot" in out and "not stored yet" in out
        assert act(svc)["hold"] is True
        # a release does wait for it (the unsafe direction): 503, said as such
        line = one_line_error(cli(svc, "release"))
        assert "the service's store is unavailable (503)" in line and "retry in 1 s" in line
        assert act(svc)["hold"] is True
    finally:
        lock.release()


def test_up_reads_the_act_latency_from_the_service_metrics(svc: ProcessService):
    for _ in range(3):
        act(svc)
    latency = act_latency_ms(httpx.get(f"{svc.url}/metrics", timeout=10).text)
    assert latency is not None
    p50, p99 = latency
    assert 0 < p50 <= p99


def test_status_counts_demonstrations_and_corrections_apart(svc: ProcessService):
    # (last in the module: the earlier tests expect an empty log)
    steps = [transition("cli-demo", "d0", i, source="demo") for i in range(3)]
    steps += [transition("cli-demo", "h0", 0, source="human")]
    r = httpx.post(
        f"{svc.url}/v1/transitions",
        json={"transitions": steps},
        headers={"Authorization": f"Bearer {ROBOT_TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    table = status_table(ok(cli(svc, "status")))
    assert table["by source"] == "policy 0 · human 1 · demo 3"


def test_up_does_not_count_an_offline_learner_as_caught_up(svc: ProcessService):
    """`up --steps` stops the learner once it has caught up; a learner that has not come online
    yet (still importing, its SIGTERM handler not set) has not, even when no update is due."""
    from robot_sac.cli.live import fetch_status, learner_caught_up

    status = fetch_status(svc.url, VIEWER_TOKEN)
    assert status is not None and status.learner is not None  # the status is read...
    assert status.learner.state == "offline"  # ...and this service has no learner
    assert not learner_caught_up(svc.url, due_updates=0, slack=0, token=VIEWER_TOKEN)
