"""A person's path through the web UI, in headless Chromium (Debian's chromium + chromium-driver, installed by
`make browser`): log in, find the run of mlops_training in the runs list and see it succeeded, open it and see each
task's state, open the tuning task's 'Tuning report' link and read the report: one table row per trial with its
hyper-parameters and metrics, and a learning curve per trial.

Every check reads what the page shows (texts, table rows, SVG elements). Screenshots and the page source of each
step go to .stack/screenshots/ for a person to look at; nothing is asserted about them."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from stack.demo import AIRFLOW, DAG_ID, admin_password
from tests.e2e.conftest import NUM_SAMPLES

WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "chromium and chromedriver are needed (Debian packages chromium, chromium-driver; `make browser` "
            "installs them, `make test` runs it)",
            pytrace=False,
        )
    options = Options()
    options.binary_location = chromium
    # As root, without a display, and without Chromium's background calls to hosts this machine cannot reach.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        "--lang=en-US",
    ):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.implicitly_wait(0)
    yield session
    session.quit()


def _keep(browser: Any, name: str) -> None:
    """The screenshot and the page source of a step, for a person (and for debugging a failure)."""
    from stack.config import stack_paths

    folder = stack_paths().root / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))
    (folder / f"{name}.html").write_text(browser.page_source)


def _row_of(browser: Any, text: str) -> Any:
    """The table row (or ARIA row) that holds a link or cell reading exactly `text`, once it is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    xpath = f"//*[normalize-space()='{text}']/ancestor::*[self::tr or @role='row'][1]"
    return WebDriverWait(browser, WAIT_S).until(ec.visibility_of_element_located((By.XPATH, xpath)))


def _wait_for_text(browser: Any, element: Any, pattern: str) -> str:
    """The element's text once it matches `pattern` (case-insensitive): the UI fills rows in as data arrives."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(lambda _: re.search(pattern, element.text, re.IGNORECASE))
    return str(element.text)


@pytest.fixture(scope="module")
def logged_in(browser: Any) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{AIRFLOW}/auth/login?next={quote(f'/dags/{DAG_ID}/runs')}")
    WebDriverWait(browser, WAIT_S).until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(admin_password())
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: "/auth/login" not in b.current_url)
    return browser


def test_the_runs_list_shows_both_first_runs_succeeded(logged_in: Any, first_run: dict[str, Any]) -> None:
    browser = logged_in
    browser.get(f"{AIRFLOW}/dags/{DAG_ID}/runs")
    for run_id in (first_run["run_id"], first_run["other"]["run_id"]):
        row = _row_of(browser, run_id)
        text = _wait_for_text(browser, row, r"\bsuccess")
        assert not re.search(r"\bfailed\b", text, re.IGNORECASE), text
    _keep(browser, "airflow-runs")


def test_the_run_shows_each_tasks_state(logged_in: Any, first_run: dict[str, Any]) -> None:
    """The training branch ran, the reuse branch was skipped (what a user checks to see which path a run took)."""
    browser = logged_in
    browser.get(f"{AIRFLOW}/dags/{DAG_ID}/runs/{quote(first_run['run_id'])}")
    expected = {
        "ingest_raw_data": "success",
        "check_for_existing_model": "success",
        "preprocess_with_spark": "success",
        "tune_models": "success",
        "register_best_model": "success",
        "publish_run_summary": "success",
        "reuse_existing_model": "skipped",
    }
    for task_id, state in expected.items():
        _wait_for_text(browser, _row_of(browser, task_id), rf"\b{state}\b")
    _keep(browser, "airflow-run-tasks")


def test_the_tuning_report_shows_each_trial_and_its_learning_curve(logged_in: Any, first_run: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = logged_in
    wait = WebDriverWait(browser, WAIT_S)
    # The tuning task's details carry the 'Tuning report' extra link.
    browser.get(f"{AIRFLOW}/dags/{DAG_ID}/runs/{quote(first_run['run_id'])}/tasks/tune_models/details")
    link = wait.until(ec.visibility_of_element_located((By.XPATH, "//a[normalize-space()='Tuning report']")))
    href = link.get_attribute("href")
    assert "/mlops/tuning-report" in href and quote(first_run["run_id"], safe="") in href
    _keep(browser, "airflow-tune-task")

    browser.get(href)
    table = wait.until(ec.visibility_of_element_located((By.ID, "trials")))
    heading = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")]
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert heading[0] == "trial" and any(name.startswith("val_") for name in heading), heading
    assert len(rows) == NUM_SAMPLES, rows
    metric_columns = [i for i, name in enumerate(heading) if name.startswith("val_")]
    for row in rows:
        assert row[0], row  # the trial's run name in MLflow
        assert all(re.fullmatch(r"-?[\d.]+(e[+-]?\d+)?", row[i]) for i in metric_columns), row
    assert len({row[0] for row in rows}) == NUM_SAMPLES, "one row per trial"

    curves = browser.find_element(By.XPATH, "//h2[normalize-space()='Learning curves']/following-sibling::*[1]")
    assert curves.tag_name == "svg" and curves.is_displayed()
    assert "by epoch" in curves.get_attribute("aria-label")
    lines = curves.find_elements(By.XPATH, ".//*[local-name()='polyline']")
    assert len(lines) == NUM_SAMPLES, "one learning curve per trial"
    titles = {line.find_element(By.XPATH, "./*[local-name()='title']").get_attribute("textContent") for line in lines}
    assert titles == {row[0] for row in rows}, "each curve is labelled with its trial"
    _keep(browser, "tuning-report")
