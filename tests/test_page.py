"""The page at ``/`` and ``errand.js`` in a real headless Chromium, against the real stack.

A private Redis, a real worker and the API under gunicorn with keys on; Playwright drives
Debian's chromium (``scripts/test`` installs it). ``ERRAND_SCREENSHOT=docs/page.png`` makes
the first test save a screenshot of the page with jobs running.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Route, sync_playwright

from app.store.apikeys import create_key
from app.web.page import PAGE_POLICY
from tests.support import ROOT, Api, errand_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Runs before the page's own scripts (and outside its CSP): counts CSP violations.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    """Debian's chromium, headless, with a fresh profile; closed whatever happens."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            context.set_default_timeout(20_000)
            context.add_init_script(WATCH_CSP)
            yield context
        finally:
            context.close()


@dataclass
class Site:
    """The API with keys on, a browser tab, and what the tab did."""

    api: Api
    key: str
    page: Page
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    console: list[tuple[str, str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def submit(self, params: dict[str, Any]) -> str:
        """Submit a demo.progress job over HTTP (not through the page); its id."""
        body = {"task": "demo.progress", "params": params}
        status, _, task = self.api.call("POST", "/api/v1/tasks", body, key=self.key)
        assert status == 202, task
        return str(task["id"])

    def failed_loads(self) -> list[tuple[str, str]]:
        """(message, URL) of every console error."""
        return [(text, url) for kind, text, url in self.console if kind == "error"]


@pytest.fixture()
def site(stack: Callable[..., Any], tmp_path: Path) -> Iterator[Site]:
    server = stack("redis")
    log = tmp_path / "errand.log"
    stack("worker", errand_env(server.url), log, "page", concurrency=4)
    key = create_key(server.client(), "page", admin=True)
    with (
        Api(errand_env(server.url, AUTH_DISABLED="false"), log) as api,
        chromium(tmp_path / "chromium") as context,
    ):
        page = context.new_page()
        found = Site(api, key, page)
        page.on("request", lambda r: found.requests.append((r.method, r.url, r.headers)))
        page.on(
            "console",
            lambda m: found.console.append((m.type, m.text, m.location.get("url", ""))),
        )
        page.on("pageerror", lambda e: found.page_errors.append(str(e)))
        yield found


def submit_in_page(page: Page, **params: Any) -> str:
    """Fill the demo.progress form (fields not named are left empty), submit; the new id."""
    page.select_option("#task-type", "demo.progress")
    for name in ("steps", "delay", "fail_at", "retry_at"):
        page.fill(f"#param-{name}", str(params.get(name, "")))
    before = page.locator("#jobs .job").count()
    page.click("#submit-button")
    page.locator("#jobs .job").nth(before).wait_for()
    task_id = page.locator("#jobs .job").first.get_attribute("data-task-id")
    assert task_id
    return task_id


def card(page: Page, task_id: str) -> Any:
    return page.locator(f'.job[data-task-id="{task_id}"]')


def wait_state(page: Page, task_id: str, state: str) -> None:
    page.wait_for_selector(f'.job[data-task-id="{task_id}"][data-state="{state}"]')


def bars_moving(page: Page) -> int:
    """How many bars stand between 0 and 100."""
    # page.evaluate, not wait_for_function: that one evaluates strings, which the CSP refuses.
    return int(
        page.evaluate(
            "Array.from(document.querySelectorAll('#jobs progress[value]'))"
            ".filter((bar) => bar.value > 0 && bar.value < 100).length"
        )
    )


def test_page_runs_watches_cancels_and_shows_errors(site: Site) -> None:
    page = site.page
    answer = page.goto(site.url + "/")
    assert answer is not None and answer.status == 200
    assert answer.headers["content-security-policy"] == PAGE_POLICY

    # Keys are on: the page asks for one and keeps it in this tab only.
    page.wait_for_selector("#key-section:not([hidden])")
    page.fill("#key", site.key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#work:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('errand.key')") == site.key
    page.wait_for_selector("#param-steps")
    options = page.locator("#task-type option").all_inner_texts()
    assert {"demo.progress", "email.send", "email.bulk"} <= set(options)
    page.select_option("#task-type", "email.bulk")  # a complex field gets a JSON textarea
    assert page.get_attribute("#param-recipients", "data-kind") == "json"
    assert page.locator("#param-to").count() == 0
    page.select_option("#task-type", "email.send")
    assert page.get_attribute("#param-to", "data-kind") == "lines"

    # Invalid params: the API's 422 shown as text, next to the form.
    page.select_option("#task-type", "demo.progress")
    page.fill("#param-steps", "0")
    page.fill("#param-delay", "0")
    page.click("#submit-button")
    page.locator("#submit-error").wait_for()
    assert "params.steps: Input should be greater than or equal to 1" in page.inner_text(
        "#submit-error"
    )

    # Three jobs at once: their bars move side by side.
    slow = submit_in_page(page, steps=12, delay=0.3)
    slower = submit_in_page(page, steps=8, delay=0.5)
    quick = submit_in_page(page, steps=5, delay=0.4)
    wait_for(lambda: bars_moving(page) >= 3, 20)
    shot = os.environ.get("ERRAND_SCREENSHOT")
    if shot:
        time.sleep(0.6)  # the bars apart
        page.screenshot(path=str(ROOT / shot), full_page=True, animations="disabled")

    wait_state(page, quick, "SUCCESS")
    assert card(page, quick).locator(".bar").evaluate("bar => bar.value") == 100
    assert "100 %" in card(page, quick).locator(".job-progress").inner_text()
    assert '"steps": 5' in card(page, quick).locator(".job-result").inner_text()
    for task_id in (slow, slower):
        wait_state(page, task_id, "SUCCESS")

    # Cancel a running job.
    long = submit_in_page(page, steps=100, delay=0.2)
    wait_state(page, long, "PROGRESS")
    card(page, long).locator(".cancel").click()
    wait_state(page, long, "REVOKED")
    assert card(page, long).locator(".cancel").is_hidden()
    assert card(page, long).locator(".retry").is_visible()

    # A failure: its error type and message as text, no traceback; retry makes a new job.
    failing = submit_in_page(page, steps=3, delay=0.1, fail_at=2)
    wait_state(page, failing, "FAILURE")
    error = card(page, failing).locator(".job-error").inner_text()
    assert error == "DemoError: asked to fail at step 2 of 3"
    card(page, failing).locator(".retry").click()
    page.wait_for_selector(f'.job[data-task-id="{failing}"] .job-note:not([hidden])')
    again = page.locator("#jobs .job").first.get_attribute("data-task-id")
    assert again and again != failing
    assert card(page, failing).locator(".job-note").inner_text() == f"Retried as {again[:8]}"
    wait_state(page, again, "FAILURE")
    assert "Traceback" not in page.content()

    # Recent tasks list every one of them with its state.
    for task_id, state in [(quick, "SUCCESS"), (long, "REVOKED"), (failing, "FAILURE")]:
        page.wait_for_selector(f'#recent tr[data-task-id="{task_id}"] td.state-{state.lower()}')

    # Nothing from elsewhere, no key in any URL, nothing the CSP refused, no script error.
    origin = site.url + "/"
    assert [url for _, url, _ in site.requests if not url.startswith((origin, "data:"))] == []
    assert [url for _, url, _ in site.requests if site.key in url] == []
    assert page.evaluate("window.__csp") == []
    # No style set on an element (Playwright's screenshot leaves an empty one on inputs).
    styled = "Array.from(document.querySelectorAll('[style]:not([style=\"\"])'), e => e.outerHTML)"
    assert page.evaluate(styled) == []
    assert site.page_errors == []
    # The only console errors are the browser's notes of the two refusals asked for: the
    # first look without a key (401) and the invalid params (422).
    failed = site.failed_loads()
    assert [url.removeprefix(site.url) for _, url in failed] == [
        "/api/v1/task-types",
        "/api/v1/tasks",
    ], failed
    assert "status of 401" in failed[0][0] and "status of 422" in failed[1][0]


WATCH = """
async ({id, key, transport}) => new Promise((resolve) => {
  const seen = {updates: [], progress: [], done: [], errors: []};
  const finish = () => setTimeout(() => resolve(seen), 300);  // anything after onDone counts too
  Errand.watch(id, {
    key, transport,
    onUpdate: (t) => seen.updates.push(t.state),
    onProgress: (t) => seen.progress.push(t.progress.current),
    onDone: (t) => { seen.done.push(t.state); finish(); },
    onError: (e) => { seen.errors.push([e.status, e.message]); finish(); },
  });
})
"""


def watch(site: Site, task_id: str, key: str | None = None, transport: str = "auto") -> Any:
    key = site.key if key is None else key
    return site.page.evaluate(WATCH, {"id": task_id, "key": key, "transport": transport})


def task_requests(site: Site, task_id: str) -> list[tuple[str, str, dict[str, str]]]:
    return [r for r in site.requests if f"/api/v1/tasks/{task_id}" in r[1]]


def test_errand_js_streams_long_polls_retries_and_gives_up(site: Site) -> None:
    page = site.page
    page.goto(site.url + "/")
    page.wait_for_selector("#key-section:not([hidden])")  # page.js ran, so errand.js did

    # Server-Sent Events first: a stream token, then the events URL, never the key in it.
    # Every state comes, RETRY too.
    streamed = site.submit({"steps": 4, "delay": 0.3, "retry_at": 2})
    seen = watch(site, streamed)
    assert seen["done"] == ["SUCCESS"] and seen["errors"] == []
    assert "RETRY" in seen["updates"] and seen["updates"][-1] == "SUCCESS"
    assert seen["progress"][-1] == 4
    urls = [url for _, url, _ in task_requests(site, streamed)]
    assert urls[0].endswith("/stream-token") and "/events?token=" in urls[1], urls
    assert all(url.endswith("/stream-token") or "/events?token=" in url for url in urls), urls

    # Long-poll, forced: no stream, each poll after the first sends the ETag it has.
    polled = site.submit({"steps": 6, "delay": 0.3})
    started = time.monotonic()
    seen = watch(site, polled, transport="poll")
    took = time.monotonic() - started
    assert seen["done"] == ["SUCCESS"] and seen["errors"] == []
    assert len(seen["progress"]) >= 3 and seen["progress"] == sorted(set(seen["progress"]))
    polls = task_requests(site, polled)
    assert all(method == "GET" for method, _, _ in polls), polls
    assert len(polls) <= 2 * took + 6 + 2, polls  # one per change or per second, no more
    assert all("if-none-match" in headers for _, _, headers in polls[1:]), polls
    assert any("wait=" in url for _, url, _ in polls[1:]), polls

    # Six watches at once, more than the four connections errand.js holds open (browsers
    # allow six per origin): every one finishes, and the page can still call the API.
    many = [site.submit({"steps": 5, "delay": 0.4}) for _ in range(6)]
    took, states = page.evaluate(
        """async ({ids, key}) => {
          const all = ids.map((id) => new Promise((resolve) => Errand.watch(id, {
            key, onDone: (t) => resolve(t.state), onError: (e) => resolve(e.status)})));
          await new Promise((resolve) => setTimeout(resolve, 700));  // the streams are open
          const started = performance.now();
          await Errand.client({key}).list({limit: 1});
          return [performance.now() - started, await Promise.all(all)];
        }""",
        {"ids": many, "key": site.key},
    )
    assert states == ["SUCCESS"] * 6
    assert took < 1000  # not queued behind the streams

    # A server without event streams: the client long-polls instead.
    # (Simulated in the browser: this API has them.)
    page.route("**/stream-token", lambda route: route.fulfill(status=404, body="{}"))
    seen = watch(site, site.submit({"steps": 2, "delay": 0.2}))
    page.unroute("**/stream-token")
    assert seen["done"] == ["SUCCESS"] and seen["errors"] == []

    # 503 with Retry-After, then a refused connection: the watch waits and carries on.
    # (Simulated in the browser's network layer: the real API answers 503 only when Redis
    # is gone, which would stop the worker's job too.)
    flaky = site.submit({"steps": 3, "delay": 0.3})
    seen_at: list[float] = []

    def fail_twice(route: Route) -> None:
        seen_at.append(time.monotonic())
        if len(seen_at) == 1:
            route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Content-Type": "application/problem+json"},
                body='{"type": "about:blank", "title": "Service Unavailable", "status": 503}',
            )
        elif len(seen_at) == 2:
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route(f"**/api/v1/tasks/{flaky}*", fail_twice)
    seen = watch(site, flaky, transport="poll")
    page.unroute(f"**/api/v1/tasks/{flaky}*")
    assert seen["done"] == ["SUCCESS"] and seen["errors"] == []
    assert seen_at[1] - seen_at[0] >= 0.9  # Retry-After: 1 was honoured
    assert 0.2 <= seen_at[2] - seen_at[1] <= 1.5  # then a short backoff

    # A wrong key and an unknown id: onError with the API's status, then nothing more.
    for transport in ("auto", "poll"):
        seen = watch(site, polled, key="erd_000000000000_wrong", transport=transport)
        assert seen["done"] == [] and [status for status, _ in seen["errors"]] == [401]
        assert "wrong or revoked" in seen["errors"][0][1]
        seen = watch(site, "7b0c4f3e-0000-4000-8000-000000000000", transport=transport)
        assert seen["done"] == [] and [status for status, _ in seen["errors"]] == [404]
    rejected = page.evaluate(
        """async (key) => {
          try { await Errand.client({key}).list({limit: 1}); return null; }
          catch (e) { return [e.status, e.detail]; }
        }""",
        "erd_000000000000_wrong",
    )
    assert rejected == [401, "the API key is wrong or revoked"]
    assert site.page_errors == []
    assert page.evaluate("window.__csp") == []
