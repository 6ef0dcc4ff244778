"""The operator's view in a real browser: headless Chromium (Debian's chromium and chromium-driver, installed by
``make``'s setup) driven by Selenium against the session's real Airflow.

It logs in, reads the DAG list, opens the upload DAG's trigger form and checks every Param's title, description and
section and the products multi-select, types a sample date as a user does and sees it in the conf, submits an
impossible date and reads the refusal, triggers a real dry run, follows it to success in the grid, reads the plan
task's log and the run's note. Screenshots go to ``build/test-artifacts/`` (``HORTACLOUD_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.airflow_stack import USERNAME, AirflowClient, AirflowStack
from tests.dags.conftest import E2E_SAMPLE
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_DAG = "hortacloud_upload_sample"
METADATA_DAG = "hortacloud_neuron_metadata"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Chromium's own network (updates, sync, field trials) would try hosts this machine must not reach.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1300",
)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("HORTACLOUD_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(stack: AirflowStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One logged-in headless Chromium for the module."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    assert not missing, f"{', '.join(missing)} missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        login(driver, stack)
        yield driver
    finally:
        driver.quit()


def login(driver: Any, stack: AirflowStack) -> None:
    from selenium.webdriver.common.by import By

    password = json.loads(stack.passwords_file.read_text())[USERNAME]
    driver.get(f"{stack.url}/auth/login?next=%2F")
    find(driver, By.NAME, "username").send_keys(USERNAME)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    wait_until(lambda: "/auth/login" not in driver.current_url, 30, "the UI after signing in", poll=0.3)


def find(driver: Any, by: str, value: str, timeout: float = 30) -> Any:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((by, value)))


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def open_section(driver: Any, title: str) -> Any:
    """Expand one accordion section of the trigger form (the form opens one at a time); its element."""
    from selenium.webdriver.common.by import By

    button = find(driver, By.XPATH, f"//*[@role='dialog']//button[normalize-space()={xpath_text(title)}]")
    if button.get_attribute("aria-expanded") != "true":
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        wait_until(lambda: button.get_attribute("aria-expanded") == "true", 10, f"section {title} open", poll=0.1)
    return button.find_element(By.XPATH, "./ancestor::*[@data-scope='accordion' and @data-part='item'][1]")


def xpath_text(text: str) -> str:
    return f"'{text}'" if "'" not in text else "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def conf_json(driver: Any) -> str:
    """The Configuration JSON the form will send, as its editor shows it."""
    from selenium.webdriver.common.by import By

    section = open_section(driver, "Advanced Options")
    return " ".join(str(section.find_element(By.CSS_SELECTOR, ".view-lines").text).split())


def open_trigger_form(driver: Any, stack: AirflowStack) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.url}/dags/{UPLOAD_DAG}")
    find(driver, By.XPATH, "//button[@aria-label='Trigger Dag']").click()
    find(driver, By.CSS_SELECTOR, "[role=dialog]")
    wait_until(lambda: "Trigger Dag - Publish a MouseLight sample" in page_text(driver), 30, "the form", poll=0.2)


def type_sample(driver: Any, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_section(driver, "Sample")
    field = find(driver, By.ID, "element_sample")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    field.send_keys(value)  # typed key by key, as a user does


def press_trigger(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    button = driver.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    wait_until(button.is_enabled, 10, "the Trigger button enabled", poll=0.2)
    button.click()


def dag_params(api: AirflowClient) -> dict[str, dict[str, Any]]:
    return api.request("GET", f"/api/v2/dags/{UPLOAD_DAG}/details")["params"]


# -- the tests ---------------------------------------------------------------------------------------------------------


def test_the_dag_list_explains_both_dags(browser: Any, stack: AirflowStack, api: AirflowClient) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.wait_for_dag(METADATA_DAG, timeout=60)
    browser.get(f"{stack.url}/dags")
    wait_until(lambda: "Publish a MouseLight sample" in page_text(browser), 30, "the DAG list", poll=0.3)
    text = page_text(browser)
    assert "Rebuild neuron metadata" in text
    assert "hortacloud" in text and "mouselight" in text  # the tags a user filters by
    for dag_id in (UPLOAD_DAG, METADATA_DAG):
        dag = api.dag(dag_id)
        assert dag and dag["description"] and dag["dag_display_name"] != dag_id


def test_the_trigger_form_shows_every_param_and_refuses_an_impossible_date_in_words(
    browser: Any, stack: AirflowStack, api: AirflowClient, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_trigger_form(browser, stack)
    params = dag_params(api)
    sections: dict[str, list[dict[str, Any]]] = {}
    for value in params.values():
        schema = value["schema"] | {"description": value.get("description") or value["schema"].get("description")}
        sections.setdefault(schema["section"], []).append(schema)
    assert set(sections) == {"Sample", "Where the data is", "Options"}
    for title, schemas in sections.items():
        shown = " ".join(str(open_section(browser, title).text).split())
        for schema in schemas:
            assert schema["title"] in shown, (title, schema["title"])
            assert " ".join(schema["description"].split()) in shown, (title, schema["title"])
    # The products multi-select: Images chosen, all five offered by their titles.
    open_section(browser, "Sample")
    assert "Images" in open_section(browser, "Sample").text
    combo = browser.find_element(By.XPATH, "//input[@role='combobox' and @aria-label='Select one or multiple values']")
    combo.click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[id*='-option-']"), 10, "the product choices", poll=0.2)
    offered = [option.text for option in browser.find_elements(By.CSS_SELECTOR, "[id*='-option-']")]
    assert len(offered) == 4 and all(offered), offered  # the other four (Images is chosen already)
    # Close the menu by clicking the form's title (Escape would close the whole dialog).
    browser.find_element(By.XPATH, "//*[@role='dialog']//*[starts-with(normalize-space(), 'Trigger Dag - ')]").click()

    type_sample(browser, "2023-05-10")
    assert '"sample": "2023-05-10"' in conf_json(browser)  # a text field: typed as the folder name, sent as typed
    browser.save_screenshot(str(artifacts / "trigger-form.png"))
    open_section(browser, "Sample")
    browser.save_screenshot(str(artifacts / "trigger-form-sample.png"))

    type_sample(browser, "2023-02-30")
    assert '"sample": "2023-02-30"' in conf_json(browser)
    runs_before = len(api.dag_runs(UPLOAD_DAG))
    press_trigger(browser)
    expected = "Sample '2023-02-30' is not a calendar date: expected a sample date as YYYY-MM-DD"
    wait_until(lambda: expected in " ".join(page_text(browser).split()), 20, "the refusal in words", poll=0.3)
    browser.save_screenshot(str(artifacts / "trigger-refused.png"))
    assert len(api.dag_runs(UPLOAD_DAG)) == runs_before  # refused before any run existed


def test_a_dry_run_from_the_form_goes_green_and_says_what_it_published(
    browser: Any, stack: AirflowStack, api: AirflowClient, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    api.unpause(UPLOAD_DAG)
    open_trigger_form(browser, stack)
    type_sample(browser, E2E_SAMPLE)
    open_section(browser, "Options")
    dry_run = browser.find_element(By.NAME, "element_dry_run")
    browser.execute_script("arguments[0].click()", dry_run)
    assert dry_run.is_selected()  # the conf below the editor's visible lines is checked on the run it makes
    before = {run["dag_run_id"] for run in api.dag_runs(UPLOAD_DAG)}
    press_trigger(browser)

    def new_run() -> str | None:
        fresh = [r["dag_run_id"] for r in api.dag_runs(UPLOAD_DAG) if r["dag_run_id"] not in before]
        return fresh[0] if fresh else None

    wait_until(lambda: new_run() is not None, 30, "the run the form triggered", poll=0.5)
    run_id = new_run()
    assert run_id is not None
    assert api.dag_run(UPLOAD_DAG, run_id)["conf"] == {
        "sample": E2E_SAMPLE,
        "products": ["images"],
        "image_base": None,
        "segmentation_dirs": ["stitching-output"],
        "dry_run": True,
        "skip_preflight": False,
    }
    assert api.wait_for_run(UPLOAD_DAG, run_id, timeout=180, poll=1.0) == "success"

    # The grid: the run and its tasks green, the note (the summary table) on the run.
    browser.get(f"{stack.url}/dags/{UPLOAD_DAG}/runs/{run_id}")
    wait_until(lambda: "Dry run: 2023-05-10: images (done)" in page_text(browser), 60, "the run's note", poll=0.5)
    wait_until(
        lambda: (
            browser.find_elements(By.CSS_SELECTOR, "[data-state='success'], [aria-label*='success' i]")
            or "success" in page_text(browser).lower()
        ),
        30,
        "the run shown as success",
        poll=0.5,
    )
    browser.save_screenshot(str(artifacts / "dry-run-finished.png"))
    note = api.dag_run(UPLOAD_DAG, run_id)["note"]
    assert "| images | dry run |" in note

    # The plan task's log, as a user opens it from the run.
    browser.get(f"{stack.url}/dags/{UPLOAD_DAG}/runs/{run_id}/tasks/plan")
    wait_until(lambda: f"images/{E2E_SAMPLE}/ktx/" in page_text(browser), 60, "the plan lines in the log", poll=0.5)
    browser.save_screenshot(str(artifacts / "plan-log.png"))


def test_the_readme_shows_the_form() -> None:
    """The README's picture of the form is a screenshot this suite takes (``trigger-form-sample.png``)."""
    committed = ROOT / "docs" / "images" / "trigger-form.png"
    assert committed.read_bytes().startswith(b"\x89PNG") and committed.stat().st_size > 10_000
    assert "docs/images/trigger-form.png" in (ROOT / "README.md").read_text()
