"""The console in a real browser (Debian's headless chromium) over real HTTP and real Redis.

The replay tests also run the real worker command and the SMTP sink: what the
console replays must arrive.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from fastapi import FastAPI
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from notifier.app import NotifierCelery
from notifier.client import publish
from notifier.deadletter import DeadLetterStore
from notifier.settings import Settings
from notifier.testing import SmtpSink, WorkerProcess
from notifier.web.console import console_router
from notifier.web.console.wiring import production_ports
from notifier.web.server import ServerThread
from tests import samples
from tests.console.conftest import API_KEY
from tests.console.seeding import seed
from tests.polling import eventually

pytestmark = pytest.mark.integration


def wait(browser: Any, timeout: float = 10) -> WebDriverWait[Any]:
    """Waits that read elements of a page being replaced (a submit, a refresh)."""
    return WebDriverWait(
        browser,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )


def sign_in(browser: Any, console_url: str, key: str = API_KEY) -> None:
    browser.get(f"{console_url}/")
    field = browser.find_element(By.ID, "api_key")
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait(browser).until(expected_conditions.staleness_of(field))


def heading(browser: Any) -> str:
    return str(browser.find_element(By.TAG_NAME, "h1").text)


def click(browser: Any, text: str) -> None:
    [button] = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.startswith(text)]
    button.click()


def wait_for_heading(browser: Any, start: str, timeout: float = 10) -> None:
    wait(browser, timeout).until(lambda driver: heading(driver).startswith(start))


def test_an_operator_signs_in_with_the_api_key_and_out_again(
    browser: Any, console_url: str
) -> None:
    browser.get(f"{console_url}/")
    assert browser.current_url.endswith("/console/login")

    sign_in(browser, console_url)
    wait_for_heading(browser, "Overview")
    cookie = browser.get_cookie("notifier_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    click(browser, "Sign out")
    wait_for_heading(browser, "Sign in")
    browser.get(f"{console_url}/dead-letters")
    assert browser.current_url.endswith("/console/login")


def test_a_wrong_key_shows_the_login_form_again_with_an_error(
    browser: Any, console_url: str
) -> None:
    sign_in(browser, console_url, key="not-the-key")

    wait_for_heading(browser, "Sign in")
    assert "not the API key" in browser.find_element(By.ID, "login-error").text
    browser.get(f"{console_url}/")
    assert browser.current_url.endswith("/console/login")


def test_an_operator_filters_the_dead_letters_and_pages_through_them(
    browser: Any, console_url: str, store: DeadLetterStore
) -> None:
    seed(store, emails=30, texts=60)
    sign_in(browser, console_url)
    browser.get(f"{console_url}/dead-letters")
    assert browser.find_element(By.ID, "count").text == "50 of 90"

    Select(browser.find_element(By.ID, "f-channel")).select_by_value("sms")
    click(browser, "Apply filters")
    wait(browser).until(lambda driver: driver.find_element(By.ID, "count").text == "50 of 60")
    browser.find_element(By.LINK_TEXT, "Older →").click()

    wait(browser).until(
        lambda driver: driver.find_element(By.ID, "count").text == "10 of 60 (after the first 50)"
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert len(rows) == 10
    assert all(row.find_elements(By.XPATH, "td[5]")[0].text == "sms" for row in rows)


def test_a_replayed_entry_arrives_at_the_smtp_sink(
    browser: Any,
    console_url: str,
    store: DeadLetterStore,
    worker: WorkerProcess,
    smtp_sink: SmtpSink,
) -> None:
    kept, replayed = seed(store, emails=2)
    sign_in(browser, console_url)
    browser.get(f"{console_url}/dead-letters")
    browser.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{replayed}']").click()

    click(browser, "Replay selected")
    wait_for_heading(browser, "Replay 1 dead letter?")
    click(browser, "Yes, replay 1")
    wait_for_heading(browser, "Replay: 1 of 1 done")

    [received] = smtp_sink.wait_for(1, timeout=30)
    assert list(received.rcpt_tos) == ["ada@example.com"]
    assert [entry.id for entry in store] == [kept]


def test_purging_selected_entries_asks_for_confirmation_first(
    browser: Any, console_url: str, store: DeadLetterStore
) -> None:
    first, kept, last = seed(store, emails=3)
    sign_in(browser, console_url)
    browser.get(f"{console_url}/dead-letters")
    for entry_id in (first, last):
        browser.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{entry_id}']").click()

    click(browser, "Purge selected")
    wait_for_heading(browser, "Purge 2 dead letters?")
    assert store.count() == 3
    click(browser, "Yes, purge 2")
    wait_for_heading(browser, "Purge: 2 of 2 done")

    assert [entry.id for entry in store] == [kept]


def test_a_post_without_the_csrf_token_is_refused(console_url: str, store: DeadLetterStore) -> None:
    [entry_id] = seed(store, emails=1)
    session = requests.Session()
    login = session.get(f"{console_url}/login", timeout=10)
    token = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    signed_in = session.post(
        f"{console_url}/login", data={"csrf": token, "api_key": API_KEY}, timeout=10
    )
    assert signed_in.url.endswith("/console/")

    refused = session.post(
        f"{console_url}/dead-letters/apply",
        data={"action": "purge", "id": entry_id, "confirmed": "yes"},
        timeout=10,
    )
    forged = session.post(
        f"{console_url}/dead-letters/apply",
        data={"action": "purge", "id": entry_id, "confirmed": "yes", "csrf": token},
        timeout=10,
    )

    assert (refused.status_code, forged.status_code) == (403, 403)
    assert refused.headers["X-Frame-Options"] == "DENY"
    assert store.count() == 1


HOSTILE_TYPE = "<script>alert('type')</script>"
HOSTILE_EVENT_ID = "<img src=x onerror=alert('id')>"
HOSTILE_ERROR = "\x1b[31mred\x1b[0m <script>alert('error')</script> <img src=y onerror=alert(3)>"


def test_hostile_text_in_a_dead_letter_is_shown_as_inert_text(
    browser: Any, console_url: str, store: DeadLetterStore
) -> None:
    entry = store.reject(
        {"type": HOSTILE_TYPE, "event_id": HOSTILE_EVENT_ID, "note": "<b>bold</b>"},
        [HOSTILE_ERROR],
    )
    sign_in(browser, console_url)

    for page in (f"{console_url}/dead-letters", f"{console_url}/entries/{entry.id}"):
        browser.get(page)
        assert browser.find_elements(By.TAG_NAME, "script") == []
        assert browser.find_elements(By.CSS_SELECTOR, "img") == []
        assert browser.find_elements(By.CSS_SELECTOR, "main b") == []
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open
        text = browser.find_element(By.TAG_NAME, "main").text
        assert HOSTILE_TYPE in text
        assert "\\u001b[31mred" in text
        assert "\x1b" not in browser.page_source


def test_a_bulk_replay_over_a_filter_shows_its_progress_until_it_completes(
    browser: Any,
    console_url: str,
    store: DeadLetterStore,
    worker: WorkerProcess,
    smtp_sink: SmtpSink,
) -> None:
    seed(store, emails=120, texts=5)
    sign_in(browser, console_url)
    browser.get(f"{console_url}/dead-letters?channel=email")

    click(browser, "Replay all 120 matching")
    wait_for_heading(browser, "Replay all 120 matching dead letters?")
    click(browser, "Yes, replay all 120")
    wait(browser).until(expected_conditions.url_contains("/console/bulk/"))
    assert browser.find_element(By.ID, "total").text == "120"
    assert browser.find_element(By.TAG_NAME, "progress").get_attribute("max") == "120"

    # The page refreshes itself (meta refresh) until the worker is done.
    wait(browser, 60).until(lambda driver: driver.find_element(By.ID, "state").text == "done")
    assert browser.find_element(By.ID, "done").text == "120"
    assert browser.find_element(By.TAG_NAME, "progress").get_attribute("value") == "120"
    assert browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]") == []
    assert {entry.channel for entry in store} == {"sms"}
    assert len(smtp_sink.wait_for(120, timeout=60)) >= 120


def a_dead_lettered_welcome(
    celery_client: NotifierCelery, store: DeadLetterStore, smtp_sink: SmtpSink
) -> tuple[str, str]:
    """A real event whose email the sink refuses (550): (event id, dead letter id)."""
    smtp_sink.reject_recipient("ada@example.com")
    event_id = publish(samples.user_registered(), app=celery_client)
    entries = eventually(lambda: list(store), timeout=30, what="a dead letter")
    return event_id, entries[0].id


def test_an_entry_shows_its_attempts_error_and_the_trace_of_its_event(
    browser: Any,
    console_url: str,
    celery_client: NotifierCelery,
    store: DeadLetterStore,
    worker: WorkerProcess,
    smtp_sink: SmtpSink,
) -> None:
    event_id, entry_id = a_dead_lettered_welcome(celery_client, store, smtp_sink)
    sign_in(browser, console_url)

    browser.get(f"{console_url}/entries/{entry_id}")

    main = browser.find_element(By.TAG_NAME, "main").text
    assert "550" in browser.find_element(By.ID, "error").text
    assert "a***@example.com" in main
    assert "ada@example.com" not in browser.page_source
    assert event_id in main
    timeline = [
        row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "table.timeline tbody tr")
    ]
    assert timeline[0] == "queued"
    assert timeline[-1] == "failed"


def test_the_trace_search_finds_an_event_by_its_id(
    browser: Any,
    console_url: str,
    celery_client: NotifierCelery,
    store: DeadLetterStore,
    worker: WorkerProcess,
    smtp_sink: SmtpSink,
) -> None:
    event_id, entry_id = a_dead_lettered_welcome(celery_client, store, smtp_sink)
    sign_in(browser, console_url)
    browser.get(f"{console_url}/trace")

    browser.find_element(By.ID, "event_id").send_keys(event_id)
    click(browser, "Trace")

    wait(browser).until(
        lambda driver: driver.find_element(By.TAG_NAME, "h2").text == f"Event {event_id}"
    )
    assert browser.find_element(By.LINK_TEXT, entry_id).get_attribute("href").endswith(entry_id)
    browser.get(f"{console_url}/trace?event_id=no-such-event")
    assert "No trace of" in browser.find_element(By.TAG_NAME, "main").text


def test_the_console_is_usable_from_the_keyboard_alone(
    browser: Any, console_url: str, store: DeadLetterStore
) -> None:
    [entry_id] = seed(store, emails=1)
    browser.get(f"{console_url}/")
    browser.switch_to.active_element.send_keys(API_KEY, Keys.ENTER)  # the key field has focus
    wait_for_heading(browser, "Overview")

    def tab_to(text: str) -> None:
        for _ in range(40):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            if browser.switch_to.active_element.text.startswith(text):
                return
        raise AssertionError(f"{text!r} cannot be reached with Tab")

    tab_to("Dead letters")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for_heading(browser, "Dead letters")
    for _ in range(60):  # to the entry's checkbox, ticked with Space
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if browser.switch_to.active_element.get_attribute("value") == entry_id:
            break
    browser.switch_to.active_element.send_keys(Keys.SPACE)
    tab_to("Purge selected")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for_heading(browser, "Purge 1 dead letter?")

    for control in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), select"):
        labels = browser.find_elements(
            By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"
        )
        assert labels, f"control {control.get_attribute('name')} has no label"
    browser.get(f"{console_url}/dead-letters")
    for control in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), select"):
        labels = browser.find_elements(
            By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"
        )
        assert labels, f"control {control.get_attribute('name')} has no label"


def test_a_bulk_action_outlives_the_web_process_that_started_it(
    settings: Settings,
    celery_client: NotifierCelery,
    store: DeadLetterStore,
    worker: WorkerProcess,
    smtp_sink: SmtpSink,
) -> None:
    seed(store, emails=40)

    def serve() -> ServerThread:
        app = FastAPI()
        app.include_router(console_router(production_ports(settings, celery_client)))
        return ServerThread(app).start()

    first = serve()
    session = requests.Session()
    token = session.get(f"{first.url}/console/login", timeout=10).text
    token = token.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    overview = session.post(
        f"{first.url}/console/login", data={"csrf": token, "api_key": API_KEY}, timeout=10
    )
    csrf = overview.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    started = session.post(
        f"{first.url}/console/bulk",
        data={"csrf": csrf, "action": "purge", "confirmed": "yes", "total": "40"},
        timeout=10,
        allow_redirects=False,
    )
    job_path = started.headers["Location"]
    first.stop()  # the web process goes away; the job does not

    second = serve()
    try:

        def finished() -> requests.Response | None:
            answer = session.get(f"{second.url}{job_path}", timeout=10)
            return answer if 'id="state">done<' in answer.text else None

        page = eventually(finished, timeout=30, what="the purge done, seen by the new process")
    finally:
        second.stop()

    assert '<dd id="done">40</dd>' in page.text
    assert store.count() == 0
