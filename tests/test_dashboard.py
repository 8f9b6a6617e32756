"""The operator's dashboard at ``/``.

1. Over HTTP: the page is public, sent under a strict Content-Security-Policy, ``nosniff`` and
   ``no-store``; it and its files name no outside URL and hold no inline script or style.
2. In a real browser -- Debian's ``chromium`` driven by Selenium through the system's
   ``chromedriver`` (nothing downloads a browser) -- against a real service and a real learner
   process, with robots that act and log episodes over HTTP: the operator signs in once, sees the
   served version the API reports, holds and releases every robot, holds one robot only, pins an
   older version, pauses and resumes the learner, follows the newest version again; each press is
   checked through the API, never through the page alone. A viewer token sees the figures and a
   control press shows the 403 message. A service without tokens works without one.

The browser is required, never skipped: ``.ci/run`` installs ``chromium`` and ``chromium-driver``.
The operator test saves a screenshot; with ``ROBOT_SAC_SCREENSHOT=docs/dashboard.png`` it is the
README's (a plain test run leaves the tree as it was).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from robot_sac.config import SACConfig
from robot_sac.schemas import TaskSpec
from tests.servers import (
    OPERATOR_TOKEN,
    ROBOT_TOKEN,
    LearnerProcess,
    ThreadService,
    start_thread_service,
    write_task,
)

ROOT = Path(__file__).resolve().parent.parent
# Where the operator test saves its screenshot (the README's when asked; else a temp file).
SCREENSHOT_ENV = "ROBOT_SAC_SCREENSHOT"
VIEWER_TOKEN = "viewer-secret-token"

# A small task the learner updates quickly on a CPU: 3 observations, 1 action in [-1, 1]; an
# episode whose last reward reaches 0.9 is a success (so the chart has a success rate too).
TASK = TaskSpec(
    name="reach-demo",
    obs_dim=3,
    action_low=(-1.0,),
    action_high=(1.0,),
    success_threshold=0.9,
    sac=SACConfig(hidden=(32, 32), batch_size=32, learning_starts=200, utd=1.0),
)
EPISODE_STEPS = 25
ROBOTS = ("arm-1", "arm-2", "arm-3")
# Episodes end on at least this many versions before the browser opens (points on the chart).
VERSIONS_WITH_EPISODES = 6

T = TypeVar("T")


def wait_for(probe: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str) -> T:
    """``probe()`` until ``ok`` of it; fails with the last value seen after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(0.1)


# --- 1. the page over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadService]:
    svc = start_thread_service(
        tmp_path_factory.mktemp("dash-http") / "data",
        robot_token=ROBOT_TOKEN,
        operator_token=OPERATOR_TOKEN,
    )
    yield svc
    svc.stop()


def test_the_page_is_public_and_sent_under_a_strict_policy(secured: ThreadService) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as client:  # no token at all
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = {
            part.split()[0]: part.split()[1:]
            for part in r.headers["content-security-policy"].split(";")
        }
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        # The page holds no data: the API behind it still asks for the token.
        assert client.get("/v1/admin/status").status_code == 401


def test_the_page_and_its_files_name_no_outside_url_and_run_no_inline_code(
    secured: ThreadService,
) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        html = client.get("/").text
        # An air-gapped lab has no CDN: nothing the page names is elsewhere.
        assert "://" not in html
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
        assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
        # Inline style and handlers would be refused by the policy (and mean inline code).
        assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html)
        assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"#]+)['"]""", html)
        own = [a for a in assets if a.startswith("/dashboard/")]
        assert {"/dashboard/dashboard.js", "/dashboard/dashboard.css"} <= set(own)
        for path in own:
            r = client.get(path)
            assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff", path
            # The one URL-like text allowed: the SVG namespace, a name that is never fetched.
            assert "://" not in r.text.replace("http://www.w3.org/2000/svg", ""), path
        assert (
            client.get("/dashboard/dashboard.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        # Only the page's own files are served from its folder.
        assert client.get("/dashboard/index.html").status_code == 404
        assert client.get("/dashboard/..%2F..%2Fapp.py").status_code == 404


# --- 2. in a real browser -------------------------------------------------------------------------


def _browser() -> Any:
    """Headless chromium through the system's chromedriver (Debian's packages)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the dashboard tests need Debian's chromium and chromedriver on PATH: "
            "apt-get install -y chromium chromium-driver (.ci/run installs them)"
        )
    options = Options()
    options.binary_location = chromium  # never selenium-manager's download
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--force-prefers-reduced-motion",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _browser()
    yield driver
    driver.quit()


def script_errors(driver: Any) -> list[dict[str, Any]]:
    """What the page's console reported as severe, less the refused requests (a 401 the page
    answers by asking for a token, a 403 it shows): uncaught errors, CSP violations."""
    return [
        e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"
    ]


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def shown(driver: Any, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_element(By.ID, element_id).is_displayed())


def button(driver: Any, label: str) -> Any:
    """The button whose accessible name (aria-label, else its text) is ``label``."""
    from selenium.webdriver.common.by import By

    for b in driver.find_elements(By.TAG_NAME, "button"):
        if (b.get_attribute("aria-label") or b.text.strip()) == label and b.is_displayed():
            return b
    raise AssertionError(f"no visible button named {label!r}")


def sign_in(driver: Any, token: str) -> None:
    """Type the token in the form, by its label, and submit it with the keyboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait_for(lambda: shown(driver, "login"), bool, 15, "the sign-in form")
    label = driver.find_element(By.CSS_SELECTOR, "label[for=token]")
    field = driver.find_element(By.ID, label.get_attribute("for"))
    assert field.get_attribute("type") == "password" and "token" in label.text.lower()
    field.clear()
    field.send_keys(token, Keys.ENTER)


@dataclass
class Cell:
    """A service, a learner process and robots that have acted and ended episodes."""

    svc: ThreadService
    learner: LearnerProcess
    operator: httpx.Client
    robot: httpx.Client

    def status(self) -> dict[str, Any]:
        r = self.operator.get("/v1/admin/status")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def robots(self) -> dict[str, dict[str, Any]]:
        r = self.operator.get("/v1/admin/robots")
        assert r.status_code == 200, r.text
        return {v["robot_id"]: v for v in r.json()["robots"]}

    def act(self, robot_id: str) -> dict[str, Any]:
        r = self.robot.post("/v1/act", json={"obs": [0.1, 0.2, 0.3], "robot_id": robot_id})
        assert r.status_code == 200, r.text
        return dict(r.json())


def run_episode(robot: httpx.Client, robot_id: str, episode: int) -> None:
    """One episode as a robot runs it: an act per step, then its transitions logged.

    The task: reach a target the observation names (``obs[0]``, new each episode); the reward
    is ``1 - (action - target)**2`` a step, so a policy that learns the task earns more. Every
    step's transition names the version that answered its act.
    """
    target = ((episode * 7 + len(robot_id) + int(robot_id[-1])) % 11) / 10.0 - 0.5
    obs = [target, 0.5, -0.5]
    steps = []
    for step in range(EPISODE_STEPS):
        answer = robot.post("/v1/act", json={"obs": obs, "robot_id": robot_id}).json()
        action, version = answer["action"], answer["policy_version"]
        next_obs = [target, obs[1] * 0.9 + 0.1 * action[0], obs[2] * 0.9]
        steps.append(
            {
                "robot_id": robot_id,
                "episode_id": f"{robot_id}-e{episode}",
                "step": step,
                "obs": obs,
                "action": action,
                "reward": 1.0 - (action[0] - target) ** 2,
                "next_obs": next_obs,
                "terminated": False,
                "truncated": step == EPISODE_STEPS - 1,
                "policy_version": version,
            }
        )
        obs = next_obs
    r = robot.post("/v1/transitions", json={"transitions": steps})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    root = tmp_path_factory.mktemp("dash-cell")
    svc = start_thread_service(
        root / "data",
        TASK,
        robot_token=ROBOT_TOKEN,
        operator_token=OPERATOR_TOKEN,
        viewer_token=VIEWER_TOKEN,
        policy_poll_s=0.05,
    )
    learner = LearnerProcess(
        root / "data",
        write_task(root / "task.json", TASK),
        ROBOT_SAC_PUBLISH_EVERY="40",
        ROBOT_SAC_CHECKPOINT_EVERY="100000",
    ).start()
    operator = svc.client(OPERATOR_TOKEN)
    robot = svc.client(ROBOT_TOKEN)
    cell = Cell(svc, learner, operator, robot)
    try:
        # Rounds of one episode per robot, each on the newest version: after each round the
        # learner catches up (its update budget, UTD 1, spent on the round's data) and publishes,
        # until episodes have ended on several versions. It then stays idle (no new data): the
        # versions stay put while the browser looks.
        deadline = time.monotonic() + 120
        episode = 0
        while True:
            for robot_id in ROBOTS:
                run_episode(robot, robot_id, episode)
            episode += 1
            logged = cell.status()["transitions"]
            if logged > TASK.sac.learning_starts:
                wait_for(
                    lambda: cell.status()["learner"]["updates"],
                    lambda n, logged=logged: n >= logged - TASK.sac.learning_starts,
                    60,
                    "the learner to catch up with the log",
                )
                latest = cell.status()["latest_version"]
                wait_for(
                    lambda: cell.act("arm-1")["policy_version"],
                    lambda v, latest=latest: v == latest,
                    10,
                    f"v{latest} served",
                )
            with_episodes = [e for e in cell.status()["episodes"] if e["episodes"] > 0]
            if len(with_episodes) >= VERSIONS_WITH_EPISODES:
                break
            assert learner.alive(), learner.output()
            assert time.monotonic() < deadline, (with_episodes, learner.output()[-3000:])
        yield cell
    finally:
        learner.kill()
        svc.stop()


def test_an_operator_watches_and_drives_the_cell_from_the_dashboard(
    cell: Cell, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{cell.svc.url}/")
    # The service has tokens: the page asks for one; a wrong one is refused with a clear word.
    sign_in(browser, "not-the-right-token")
    wait_for(
        lambda: text_of(browser, "login-reason"), lambda t: "did not accept" in t, 15, "401 text"
    )
    sign_in(browser, OPERATOR_TOKEN)

    # The version shown is the one the API reports as served.
    def versions_agree() -> tuple[str, str]:
        return text_of(browser, "served-version"), f"v{cell.status()['served_version']}"

    wait_for(versions_agree, lambda p: p[0] == p[1], 15, "the served version")
    assert browser.execute_script("return sessionStorage.getItem('robot_sac.token')") == (
        OPERATOR_TOKEN
    )
    # Asked once: a reload keeps the session's token.
    browser.refresh()
    wait_for(versions_agree, lambda p: p[0] == p[1], 15, "the served version after a reload")
    assert not shown(browser, "login")
    # The learner's figures and the robots are on the page.
    learner = cell.status()["learner"]
    wait_for(lambda: text_of(browser, "l-state"), lambda t: t == learner["state"], 15, "learner")
    assert text_of(browser, "l-updates").replace(",", "") == str(learner["updates"])
    for robot_id in ROBOTS:
        assert browser.find_element(By.CSS_SELECTOR, f'#robots-body tr[data-key="{robot_id}"]')
    # For screen readers: every header cell says what it heads, every button has a name.
    assert browser.find_elements(By.CSS_SELECTOR, "th:not([scope])") == []
    for b in browser.find_elements(By.TAG_NAME, "button"):
        assert (b.get_attribute("aria-label") or b.get_attribute("textContent")).strip()
    # A keyboard user's focus stays on a robot's button while the figures refresh under it.
    focused = button(browser, "Hold robot arm-2")
    browser.execute_script("arguments[0].focus()", focused)
    before = text_of(browser, "connection")
    wait_for(lambda: text_of(browser, "connection"), lambda t: t != before, 10, "a refresh")
    assert browser.switch_to.active_element == focused

    # Hold every robot: the API says so and robots get the safe action.
    button(browser, "Hold all robots").click()
    wait_for(lambda: cell.status()["hold"], bool, 10, "the hold")
    assert cell.act("arm-2")["hold"] is True
    wait_for(lambda: text_of(browser, "hold-state"), lambda t: t == "ALL ROBOTS HELD", 10, "held")
    assert "Hold all robots: done" in text_of(browser, "action-result")
    # With the keyboard this time: a real button, pressed with Enter.
    button(browser, "Release all").send_keys(Keys.ENTER)
    wait_for(lambda: cell.status()["hold"], lambda h: h is False, 10, "the release")
    assert cell.act("arm-2")["hold"] is False

    # Hold one robot only: it is held, the others act on.
    button(browser, "Hold robot arm-1").click()
    wait_for(lambda: cell.robots()["arm-1"]["held"], bool, 10, "arm-1 held")
    assert cell.status()["hold"] is False
    assert cell.act("arm-1")["hold"] is True
    assert cell.act("arm-2")["hold"] is False
    assert not cell.robots()["arm-2"]["held"]
    button(browser, "Release robot arm-1").click()
    wait_for(lambda: cell.robots()["arm-1"]["held"], lambda h: h is False, 10, "arm-1 released")
    assert cell.act("arm-1")["hold"] is False

    # Pin an older version (a rollback): the service serves it.
    status = cell.status()
    older = sorted(
        p["version"]
        for p in cell.operator.get("/v1/admin/policies").json()["policies"]
        if p["version"] < status["served_version"]
    )[-2]
    button(browser, f"Pin version {older} (serve it and stop following)").click()
    wait_for(
        lambda: (cell.status()["served_version"], cell.status()["mode"]),
        lambda s: s == (older, "pinned"),
        10,
        f"v{older} pinned",
    )
    assert cell.act("arm-3")["policy_version"] == older
    wait_for(lambda: text_of(browser, "served-version"), lambda t: t == f"v{older}", 10, "pin")
    assert "pinned" in text_of(browser, "served-mode")

    # Pause and resume the learner.
    button(browser, "Pause learning").click()
    wait_for(lambda: cell.status()["learner_paused"], bool, 10, "the pause")
    button(browser, "Resume learning").click()
    wait_for(lambda: cell.status()["learner_paused"], lambda p: p is False, 10, "the resume")

    # Follow the newest version again.
    button(browser, "Follow newest").click()
    wait_for(
        lambda: cell.status(),
        lambda s: s["mode"] == "follow" and s["served_version"] == s["latest_version"],
        10,
        "following the newest version",
    )
    wait_for(versions_agree, lambda p: p[0] == p[1], 10, "the newest version shown")

    # The chart has a point per version with ended episodes (and the success rate).
    points = browser.find_elements(By.CSS_SELECTOR, "#chart circle.point-return")
    assert len(points) >= VERSIONS_WITH_EPISODES
    assert browser.find_elements(By.CSS_SELECTOR, "#chart rect.point-success")

    # The README's screenshot: one robot held alone, the rest working, the whole page.
    button(browser, "Hold robot arm-3").click()
    wait_for(lambda: cell.robots()["arm-3"]["held"], bool, 10, "arm-3 held")
    wait_for(lambda: text_of(browser, "hold-state"), lambda t: t == "1 robot held", 10, "partial")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, int(height) + 140)
    time.sleep(0.3)  # the resize's layout
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    asked = os.environ.get(SCREENSHOT_ENV)
    shot = ROOT / asked if asked else tmp_path / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cell.operator.post("/v1/admin/release", json={"robot_id": "arm-3"}).raise_for_status()

    assert script_errors(browser) == []


def test_a_viewer_sees_the_figures_and_a_control_is_refused_plainly(
    cell: Cell, browser: Any
) -> None:
    browser.get(f"{cell.svc.url}/")
    sign_in(browser, VIEWER_TOKEN)
    wait_for(
        lambda: (text_of(browser, "served-version"), f"v{cell.status()['served_version']}"),
        lambda p: p[0] == p[1],
        15,
        "the served version",
    )
    assert "arm-1" in text_of(browser, "robots-body")
    hold = cell.status()["hold"]
    button(browser, "Hold all robots").click()
    message = wait_for(
        lambda: text_of(browser, "action-result"), lambda t: "403" in t, 10, "the 403 message"
    )
    assert "Not allowed" in message and "viewer token may only read" in message
    assert cell.status()["hold"] == hold  # nothing changed
    # The controls are hidden, the figures keep coming.
    assert not shown(browser, "hold-all")
    first = text_of(browser, "connection")
    wait_for(lambda: text_of(browser, "connection"), lambda t: t != first, 10, "a later refresh")
    assert text_of(browser, "connection").startswith("Live")
    assert script_errors(browser) == []


def test_a_service_without_tokens_needs_none(tmp_path: Path, browser: Any) -> None:
    svc = start_thread_service(tmp_path / "data", TASK)  # loopback only, no tokens
    try:
        browser.get(f"{svc.url}/")
        wait_for(lambda: text_of(browser, "served-version"), lambda t: t == "v0", 15, "v0")
        assert not shown(browser, "login")
        button(browser, "Hold all robots").click()
        with svc.client() as client:
            wait_for(lambda: client.get("/v1/admin/status").json()["hold"], bool, 10, "hold")
        assert script_errors(browser) == []
    finally:
        svc.stop()
