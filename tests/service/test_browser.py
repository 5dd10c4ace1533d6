"""The service in a real browser: a pharmacist's day and a viewer's, end to end.

Chromium (the system's package, never a downloaded one) is driven by Playwright against
``popkin serve`` running as its own process on SQLite. One server and one browser serve the
module; the pharmacist's recommendation (MAP, so that only the first compilation costs time) is
the one the viewer then reads.

The browser is found at ``POPKIN_CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on
``PATH``. Without it these tests fail and say how to install it: they are part of the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from .conftest import PATIENT_CSV, PHARMACIST, VIEWER, browser_login, csrf_of

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PATIENT = "VANC-0042"
#: The first recommendation compiles the model in the worker.
JOB_TIMEOUT_MS = 150_000


def chromium_path() -> str:
    """The Chromium to drive, or a test failure that says how to get one."""
    given = os.environ.get("POPKIN_CHROMIUM")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"POPKIN_CHROMIUM names {given!r}, which is not a file")
        return given
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("the browser tests need Chromium (Debian/Ubuntu: apt-get install chromium; "
                "or set POPKIN_CHROMIUM=/path/to/chromium); Playwright's own browser "
                "downloads are not used")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python (pip install playwright); "
                    "its browser download is not needed: the system's Chromium is used")
    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_on(browser, sqlite_server):
    """A function opening a page in a fresh browser context (its own cookies) on the server."""
    contexts = []

    def open_page():
        context = browser.new_context(base_url=sqlite_server.url, accept_downloads=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def submit_login(page, name: str, password: str) -> None:
    """Fill and send the login form shown on ``page``; the next page must be logged in."""
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    if page.locator("#logout").count() == 0:
        pytest.fail(f"the login failed: {page.url}: {page.inner_text('main')[:300]}")
    assert f"{name} (" in page.inner_text("header")


def log_in(page, name: str, password: str) -> None:
    page.goto("/")
    assert "/login" in page.url
    submit_login(page, name, password)


def submit(page, button) -> None:
    """Click ``button`` (a selector or a locator) and wait for the page it leads to."""
    with page.expect_navigation():
        (page.locator(button) if isinstance(button, str) else button).click()


def image_loaded(page, selector: str) -> bool:
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete; }",
        arg=selector)
    return page.eval_on_selector(selector, "i => i.naturalWidth") > 0


def row_with(page, table: str, text: str):
    rows = page.locator(f"{table} tbody tr", has_text=text)
    assert rows.count() >= 1, f"no row with {text!r} in {table}: {page.inner_text(table)}"
    return rows.first


def test_the_login_form_survives_the_browser_s_own_requests_and_a_second_tab(page_on):
    """The login form's token is the browser's, not the page's: Chromium's /favicon.ico
    (answered by the login page) and a login page opened in another tab keep it valid."""
    first = page_on()
    first.goto("/login")
    second = first.context.new_page()
    second.goto("/login?next=/audit")
    first.wait_for_load_state("networkidle")
    submit_login(first, *VIEWER)
    assert "Patients" in first.inner_text("h1")


def test_a_pharmacist_records_a_patient_and_gets_a_recommendation(page_on, sqlite_server,
                                                                  tmp_path):
    page = page_on()
    log_in(page, *PHARMACIST)

    # a new patient
    page.fill("input[name=identifier]", PATIENT)
    page.fill("input[name=note]", "browser test")
    submit(page, "#create-patient")
    assert re.search(r"/patients/\d+$", page.url), page.url
    assert page.inner_text("#patient-identifier") == PATIENT
    patient_url = page.url

    # the example data, uploaded as a NONMEM-format CSV
    upload = tmp_path / "patient.csv"
    upload.write_bytes(PATIENT_CSV)
    page.set_input_files("#upload input[type=file]", str(upload))
    page.select_option("#upload select[name=format]", "csv")
    submit(page, "#upload button[type=submit]")
    assert page.url == patient_url
    records = page.inner_text("#records")
    assert records.count("dose") == 2 and "1000" in records, records
    assert "12.5" in row_with(page, "#records", "level").inner_text()
    assert image_loaded(page, "img.figure")
    assert "AGE" in page.inner_text("#covariates")

    # a covariate through the form: the new AGE replaces the uploaded one
    page.fill("#add-covariate input[name=name]", "AGE")
    page.fill("#add-covariate input[name=value]", "61")
    page.fill("#add-covariate input[name=unit]", "years")
    submit(page, "#add-covariate button[type=submit]")
    assert page.url == patient_url
    ages = page.locator("#covariates tbody tr", has_text="AGE")
    assert ages.count() == 2
    current = page.locator("#covariates tbody tr:not(.superseded)", has_text="AGE")
    assert "61" in current.inner_text() and "years" in current.inner_text()
    assert "superseded: new value of AGE" in page.inner_text("#covariates")

    # a correction: the level was 13.1, not 12.5
    level = row_with(page, "#records", "level")
    level.locator("summary").click()
    form = level.locator("form")
    form.locator("input[name=value]").fill("13.1")
    form.locator("input[name=reason]").fill("lab re-reported the level")
    submit(page, form.locator("button[type=submit]"))
    assert page.url == patient_url
    old = page.locator("#records tr.superseded", has_text="12.5")
    assert old.count() == 1
    assert "lab re-reported the level" in old.inner_text()
    assert "line-through" in old.locator("td").first.evaluate(
        "td => getComputedStyle(td).textDecorationLine")
    new = page.locator("#records tbody tr:not(.superseded)", has_text="level")
    assert new.count() == 1 and "13.1" in new.inner_text() and "correction" in new.inner_text()

    # a recommendation
    page.click("#new-recommendation")
    page.wait_for_url(re.compile(r"/recommend$"))
    page.select_option("#model", "vancomycin_goti")
    page.fill("#target", "auc24:400-600")
    page.select_option("select[name=method]", "map")
    submit(page, "#ask")
    assert re.search(r"/(jobs|recommendations)/\d+$", page.url), page.inner_text("main")
    if "/jobs/" in page.url:
        assert "Recommendation" in page.inner_text("h1")
        # the job page reloads itself until the answer is recorded
        page.wait_for_url(re.compile(r"/recommendations/\d+$"), timeout=JOB_TIMEOUT_MS)
    regimen = page.inner_text("#regimen")
    assert re.search(r"\d+(\.\d+)?\s*mg", regimen) and "every" in regimen.lower(), regimen
    probability = re.search(r"P\(target\) = (\d\.\d\d)", page.inner_text("#probability"))
    assert probability and 0 <= float(probability.group(1)) <= 1
    assert image_loaded(page, "img.figure")
    assert "vancomycin_goti" in page.inner_text("body")

    with page.expect_download() as download_info:
        page.click("#download-pdf")
    download = download_info.value
    assert download.suggested_filename.endswith("report.pdf")
    pdf = Path(download.path()).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000

    # the patient's page lists it
    page.goto(patient_url)
    assert PATIENT in page.inner_text("h1")
    assert probability.group(1) in row_with(page, "#recommendations", "vancomycin").inner_text()

    # logged out, every page asks for the login
    submit(page, "#logout")
    assert "/login" in page.url
    page.goto("/")
    assert re.search(r"/login(\?|$)", page.url)
    assert page.locator("input[name=password]").count() == 1
    assert page.locator("#logout").count() == 0


def _patient_with_recommendation(server) -> int:
    """The pharmacist's patient with a recommendation: the one the test above made, or (when
    this test runs alone) the same made over HTTP."""
    with httpx.Client(base_url=server.url, follow_redirects=True, timeout=30) as client:
        csrf = browser_login(client, *PHARMACIST)
        found = re.search(rf'href="/patients/(\d+)">{PATIENT}<', client.get("/").text)
        if found:
            pid = int(found.group(1))
        else:
            r = client.post("/patients", data={"identifier": PATIENT, "csrf_token": csrf})
            pid = int(str(r.url).rsplit("/", 1)[1])
            client.post(f"/patients/{pid}/upload", data={"format": "csv", "csrf_token": csrf},
                        files={"file": ("p.csv", PATIENT_CSV, "text/csv")})
        if "/recommendations/" not in client.get(f"/patients/{pid}").text:
            r = client.post(f"/patients/{pid}/recommend",
                            data={"model": "vancomycin_goti", "target": "auc24:400-600",
                                  "method": "map", "csrf_token": csrf},
                            follow_redirects=False)
            job = r.headers["location"].rsplit("/", 1)[1]
            for _ in range(JOB_TIMEOUT_MS // 500):
                status = client.get(f"/api/v1/jobs/{job}").json()
                if status["status"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
            assert status["status"] == "done", status
        client.post("/logout", data={"csrf_token": csrf})
    return pid


def test_a_viewer_reads_everything_and_changes_nothing(page_on, sqlite_server):
    pid = _patient_with_recommendation(sqlite_server)
    page = page_on()
    log_in(page, *VIEWER)

    # reads: the patient, the records, the recommendation
    assert page.locator(f"a[href='/patients/{pid}']", has_text=PATIENT).count() == 1
    assert page.locator("form[action='/patients']").count() == 0
    assert page.locator("#create-patient").count() == 0
    page.click(f"a[href='/patients/{pid}']")
    page.wait_for_url(f"**/patients/{pid}")
    assert "dose" in page.inner_text("#records")
    for absent in ("#add-dose", "#add-level", "#add-covariate", "#upload",
                   "#new-recommendation", "form[action$='/correct']",
                   f"form[action='/patients/{pid}/entries']", "input[type=file]"):
        assert page.locator(absent).count() == 0, absent
    link = page.locator("#recommendations a[href^='/recommendations/']").first
    link.click()
    page.wait_for_url(re.compile(r"/recommendations/\d+$"))
    assert page.inner_text("#regimen").strip()
    assert "P(target) =" in page.inner_text("#probability")
    assert image_loaded(page, "img.figure")
    assert page.locator("#rerun").count() == 0
    assert page.locator("form[action$='/rerun']").count() == 0
    # the only form a viewer gets is the logout
    assert page.locator("form").count() == 1
    page.goto(f"/patients/{pid}/recommend")
    assert "viewer may not" in page.inner_text("body")

    # a forged write from the page, with the viewer's session and a valid CSRF token
    page.goto("/")
    patients_before = page.inner_text("table")
    page.goto(f"/patients/{pid}")
    records_before = page.inner_text("#records")
    csrf = page.get_attribute("form[action='/logout'] input[name=csrf_token]", "value")
    assert csrf and csrf == csrf_of(page.content())
    writes = [("/patients", {"identifier": "FORGED-1", "note": "should not exist"}),
              (f"/patients/{pid}/entries", {"kind": "level", "time": "30", "value": "99"}),
              (f"/patients/{pid}/entries", {"kind": "dose", "time": "36", "amount": "5000"})]
    for url, data in writes:
        response = page.request.post(url, form={**data, "csrf_token": csrf},
                                     max_redirects=0)
        assert response.status == 403, (url, response.status)
        # the token was accepted; the role was refused
        assert "viewer may not" in response.text(), response.text()[:300]
    page.goto(f"/patients/{pid}")
    assert page.inner_text("#records") == records_before
    assert "99" not in page.inner_text("#records")
    page.goto("/")
    assert page.inner_text("table") == patients_before
    assert "FORGED-1" not in page.inner_text("body")
