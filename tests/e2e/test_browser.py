"""What a person sees in the MLflow UI and optuna-dashboard after a tiny pipeline run.

Both UIs are started with `python -m pipeline.ui` (the documented commands) in a copy of
the retrained tiny project, and driven with Playwright on Debian's Chromium (never a
downloaded browser). Every page is saved to test-artifacts/screenshots/<name>.png; a
failed check names its screenshot.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import REPO, VENV_BIN

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"  # apt-get install chromium
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = REPO / "test-artifacts" / "screenshots"
TIMEOUT_MS = 30_000
MODEL = "tiny-classifier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class UI:
    """`python -m pipeline.ui KIND --port N` running in ``repo``; ``url`` once it printed it."""

    def __init__(self, repo: Path, kind: str):
        self.log_path = repo / f"ui-{kind}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "pipeline.ui", kind, "--port", str(free_port())],
            cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (match := re.search(r" at (http://127\.0\.0\.1:\d+)", self.output())):
            assert self.proc.poll() is None, f"pipeline.ui {kind} exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"pipeline.ui {kind} not ready:\n{self.output()[-3000:]}"
            time.sleep(0.3)
        self.url = match.group(1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> tuple[int | None, set[int]]:
        """SIGTERM the command as a service manager would; return its exit code and the
        descendants it had (the server and its workers), which must all be gone."""
        descendants = children(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = None
        for pid in descendants:  # never leave a server behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        return code, descendants


@pytest.fixture(scope="module")
def project(tiny_retrained, tmp_path_factory) -> Path:
    assert tiny_retrained.first.returncode == 10, tiny_retrained.first.stdout[-3000:]
    return tiny_retrained.copy(tmp_path_factory.mktemp("browser") / "repo")


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # a cold React SPA on a busy 2-core box
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


@pytest.fixture
def check(page) -> Iterator[Callable[[str, Callable[[], None]], None]]:
    """check(name, fn): run the UI checks in fn, then screenshot the page to SHOTS/name.png;
    a failing check is re-raised naming the screenshot of the page as it was."""

    def run(name: str, fn: Callable[[], None]) -> None:
        shot = SHOTS / f"{name}.png"
        try:
            fn()
        except Exception as err:
            page.screenshot(path=str(shot))
            raise AssertionError(f"{name}: {err}\nscreenshot: {shot}") from err
        page.screenshot(path=str(shot))

    yield run


def test_mlflow_ui_shows_runs_trials_metrics_model_and_champion(project, page, check):
    from playwright.sync_api import expect

    train = json.loads((project / "models/train_run.json").read_text())
    exp, run_id = train["experiment_id"], train["run_id"]
    model_id = train["model_uri"].removeprefix("models:/")
    ui = UI(project, "mlflow")
    try:
        base = f"{ui.url}/#/experiments/{exp}"

        def runs_listed():
            page.goto(f"{base}/runs")
            expect(page.get_by_role("link", name="train", exact=True)).to_be_visible()
            expect(page.get_by_role("link", name="tune", exact=True)).to_be_visible()
        check("experiment_runs", runs_listed)

        def trials_nested_under_tune():
            row = page.get_by_role("row").filter(has=page.get_by_role("link", name="tune", exact=True))
            row.locator("button[data-component-id*='runnamecellrenderer']").click()
            for trial in ("trial-0", "trial-1"):
                expect(page.get_by_role("link", name=trial, exact=True)).to_be_visible()
        check("tune_trials", trials_nested_under_tune)

        def val_accuracy_chart():
            page.goto(f"{base}/runs/{run_id}/model-metrics")
            page.get_by_placeholder("Search metric charts").fill("val_accuracy")
            title = page.get_by_text("val_accuracy", exact=True)
            expect(title).to_be_visible()
            # The card holding this title (not final_val_accuracy's) and its drawn plotly line.
            card = page.locator("div").filter(has=title).filter(
                has_not=page.get_by_text("final_val_accuracy", exact=True)).first
            expect(card.locator("svg.main-svg").first).to_be_visible()
            expect(card.locator("path.js-line").first).to_be_attached()
        check("train_metrics", val_accuracy_chart)

        def model_artifacts():
            page.goto(f"{base}/models/{model_id}")
            page.get_by_text("Artifacts", exact=True).click()
            expect(page.get_by_text("MLmodel", exact=True)).to_be_visible()
            page.get_by_text("MLmodel", exact=True).click()
            expect(page.get_by_text("flavors:", exact=False).first).to_be_visible()
        check("model_artifacts", model_artifacts)

        def champion_alias():
            page.goto(f"{ui.url}/#/models/{MODEL}")
            row = page.get_by_role("row").filter(has=page.get_by_text("Version 1", exact=True))
            alias = row.get_by_role("status", name="champion", exact=True)  # the alias tag
            expect(alias).to_have_text(re.compile(r"@\s*champion"))
        check("registered_model", champion_alias)
    finally:
        code, descendants = ui.stop()
    assert code == 0, ui.output()[-2000:]
    assert "MLflow UI stopped" in ui.output()
    assert descendants and not [pid for pid in descendants if alive(pid)]


def test_optuna_dashboard_lists_the_study_and_its_trials(project, page, check):
    from playwright.sync_api import expect

    study = json.loads((project / "reports/tune/best_params.json").read_text())["study_name"]
    ui = UI(project, "optuna")
    try:
        def study_listed():
            page.goto(f"{ui.url}/dashboard")
            expect(page.get_by_text(study)).to_be_visible()
        check("optuna_studies", study_listed)

        def trials_shown():
            page.get_by_text(study).click()
            expect(page).to_have_url(re.compile(r"/dashboard/studies/\d+$"))
            page.goto(f"{page.url}/trials")  # the "Trials (List)" view
            expect(page.get_by_text("2 Trials")).to_be_visible()
            for n in (0, 1):
                expect(page.get_by_text(f"Trial {n}", exact=True).first).to_be_visible()
        check("optuna_trials", trials_shown)
    finally:
        code, descendants = ui.stop()
    assert code == 0, ui.output()[-2000:]
    assert not [pid for pid in descendants if alive(pid)]
