"""A person's path through the web UI, in headless Chromium (Debian's chromium + chromium-driver, installed by
`make test`): log in, find the successful run of mlops_training, open the tuning task's 'Tuning report' link and
check the report. Screenshots go to .stack/screenshots/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stack.demo import AIRFLOW, DAG_ID, admin_password
from tests.e2e.conftest import NUM_SAMPLES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "chromium and chromedriver are needed (Debian packages chromium, chromium-driver; `make test` "
            "installs them)",
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
    ):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.implicitly_wait(0)
    yield session
    session.quit()


def _screenshot(browser: Any, name: str) -> Path:
    from stack.config import stack_paths

    folder = stack_paths().root / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path)), f"could not save {path}"
    return path


def test_login_find_the_run_and_open_the_tuning_report(browser: Any, first_run: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    run_id = first_run["run_id"]
    browser.get(f"{AIRFLOW}/auth/login?next={quote(f'/dags/{DAG_ID}/runs')}")
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(admin_password())
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # The runs list shows our run as a success.
    wait.until(ec.presence_of_element_located((By.XPATH, f"//a[normalize-space()='{run_id}']")))
    wait.until(lambda b: "Success" in b.find_element(By.TAG_NAME, "body").text)
    assert _screenshot(browser, "airflow-runs").stat().st_size > 10_000

    # The tuning task's details carry the 'Tuning report' extra link.
    browser.get(f"{AIRFLOW}/dags/{DAG_ID}/runs/{quote(run_id)}/tasks/tune_models/details")
    link = wait.until(ec.presence_of_element_located((By.XPATH, "//a[normalize-space()='Tuning report']")))
    href = link.get_attribute("href")
    assert "/mlops/tuning-report" in href
    _screenshot(browser, "airflow-tune-task")

    browser.get(href)
    table = wait.until(ec.presence_of_element_located((By.ID, "trials")))
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == NUM_SAMPLES
    assert browser.find_elements(By.TAG_NAME, "svg"), "learning curves and parallel coordinates are drawn"
    assert _screenshot(browser, "tuning-report").stat().st_size > 10_000
