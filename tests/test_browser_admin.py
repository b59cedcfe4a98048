"""The admin page (/admin) in a real Chromium, against a real `wasync run` and `wasync sim`:
signing in with the admin token, live account cards, pairing by QR, re-pairing, the
account actions, and the page's security headers."""
from __future__ import annotations

import http.client
import json
import re
import os
import shutil
from pathlib import Path

import pytest

from daemonproc import ROOT, DaemonProcess
from simproc import SimProcess, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "t0ken-admin"
SCREENSHOT = ROOT / "test-artifacts" / "admin-page.png"
DOCS_COPY = ROOT / "docs" / "admin-page.png"
TIMEOUT_MS = 15_000

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                               "(`make test` installs it)")]

SCANNED, READY, LEAVING = "15550002222", "15550001111", "15550003333"
WORLD = {"seed": 11, "accounts": [
    {"phone": SCANNED, "pushName": "Corner Shop", "paired": False, "chats": [
        {"jid": "15552223333@s.whatsapp.net", "name": "Alice",
         "messages": [{"id": "B1", "ts": 1763900000, "text": "hello"}]}]},
    {"phone": READY, "pushName": "Bakery", "paired": True, "chats": [
        {"jid": "15552224444@s.whatsapp.net", "name": "Bob",
         "messages": [{"id": "B2", "ts": 1763900100, "text": "two loaves please"}]}]},
    {"phone": LEAVING, "pushName": "Florist", "paired": True, "chats": [
        {"jid": "15552225555@s.whatsapp.net", "name": "Carol",
         "messages": [{"id": "B3", "ts": 1763900200, "text": "roses?"}]}]},
]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("admin-page")
    sim = SimProcess(WORLD, base / "sim").start()
    daemon = DaemonProcess(base / "daemon", {"WASYNC_TRANSPORT": sim.address, "ADMIN_TOKEN": TOKEN,
                                             "WASYNC_MAX_STARTS_PER_SECOND": "50"}).start()
    yield sim, daemon
    assert daemon.stop() == 0
    sim.stop()


def raw_get(daemon: DaemonProcess, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A GET that follows no redirect and keeps the headers."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def qr_text(daemon: DaemonProcess, account_id: str) -> str:
    status, body = daemon.get(f"/api/whatsapp/accounts/{account_id}/qr?format=text", token=TOKEN)
    assert status == 200, body
    return body.decode() if isinstance(body, bytes) else body


def test_page_and_assets_are_served_with_security_headers(world):
    _, daemon = world
    status, headers, body = raw_get(daemon, "/admin")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-cache"
    html = body.decode()
    # Nothing the policy would block: no inline script, no style attribute or element.
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert " style=" not in html and "<style" not in html

    for name, kind in (("admin.css", "text/css"), ("admin.js", "text/javascript")):
        status, headers, body = raw_get(daemon, f"/admin/assets/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-cache"

    status, headers, body = raw_get(daemon, "/admin/assets/nope")
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "not_found"
    assert raw_get(daemon, "/admin/assets/..%2Fapp.py")[0] == 404
    status, headers, _ = raw_get(daemon, "/admin/")
    assert status in (301, 302, 307, 308) and headers["Location"] == "/admin"
    # The page is public; the data behind it is not.
    assert raw_get(daemon, "/api/status/dashboard")[0] == 401


def test_admin_page_in_chromium(world):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    sim, daemon = world
    base = f"http://127.0.0.1:{daemon.port}"
    requests, dialogs, page_errors = [], [], []

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("console", lambda m: page_errors.append(m.text) if "Content Security Policy" in m.text else None)

            def on_dialog(dialog):
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", on_dialog)

            # --- signing in: a wrong token is refused, the right one opens the dashboard ---------
            page.goto(f"{base}/admin")
            expect(page.get_by_test_id("login")).to_be_visible()
            expect(page.get_by_test_id("app")).to_be_hidden()
            page.get_by_test_id("token").fill("not-the-token")
            page.get_by_test_id("login-submit").click()
            expect(page.get_by_test_id("login-error")).to_contain_text("refused")
            expect(page.get_by_test_id("app")).to_be_hidden()
            page.get_by_test_id("token").fill(TOKEN)
            page.get_by_test_id("login-submit").click()
            expect(page.get_by_test_id("app")).to_be_visible()
            expect(page.get_by_test_id("empty")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('wasync.adminToken')") == TOKEN

            # --- an account added through the form pairs by QR, and the card follows live --------
            page.get_by_test_id("add-id").fill("corner")
            page.get_by_test_id("add-submit").click()
            card = page.locator('[data-account="corner"]')
            qr = card.get_by_test_id("qr")
            expect(card.get_by_test_id("status")).to_have_text("pairing")
            expect(qr).to_be_visible()
            expect(qr).to_have_attribute("src", re.compile(r"^blob:"))
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=qr.element_handle())
            first_code = qr_text(daemon, "corner")
            assert sim.scan(SCANNED, first_code) == 200
            expect(card.get_by_test_id("status")).to_have_text("connected")
            expect(card.get_by_test_id("pairing")).to_be_hidden()
            expect(card.get_by_test_id("holder")).to_contain_text(f"test-{daemon.port}")
            expect(card).to_have_attribute("data-status", "connected")

            page.get_by_test_id("add-id").fill("corner")
            page.get_by_test_id("add-submit").click()
            expect(page.get_by_test_id("add-msg")).to_contain_text("already exists")

            # --- re-pair the connected account: a new pairing, a new QR ------------------------------
            card.get_by_test_id("repair-btn").click()
            expect(card.get_by_test_id("card-msg")).to_contain_text("Pairing restarted")
            assert dialogs and "corner" in dialogs[-1]
            expect(card.get_by_test_id("status")).to_have_text("pairing")
            expect(qr).to_be_visible()
            expect(qr).to_have_attribute("src", re.compile(r"^blob:"))
            second_code = wait_for(lambda: qr_text(daemon, "corner"), what="a QR after re-pair")
            assert second_code != first_code

            # --- a paired session added with its phone connects at once; backfill by hand ----------
            page.get_by_test_id("add-id").fill("bakery")
            page.get_by_test_id("add-phone").fill(READY)
            page.get_by_test_id("add-submit").click()
            bakery = page.locator('[data-account="bakery"]')
            expect(bakery.get_by_test_id("status")).to_have_text("connected")
            bakery.get_by_test_id("backfill-btn").click()
            expect(bakery.get_by_test_id("card-msg")).to_contain_text(re.compile("Backfill started|running"))

            # --- a third account, logged out: three states on one page, then the screenshot -------
            assert daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "florist", "phone": LEAVING},
                                  token=TOKEN)[0] == 201
            florist = page.locator('[data-account="florist"]')
            expect(florist.get_by_test_id("status")).to_have_text("connected")
            sim.inject({"event": "logout", "account": LEAVING, "reason": "LOGGED_OUT"})
            expect(florist.get_by_test_id("repair")).to_be_visible()
            expect(page.get_by_test_id("count-total")).to_contain_text("3")
            expect(page.get_by_test_id("count-connected")).to_contain_text("1")
            expect(page.get_by_test_id("count-pairing")).to_contain_text("1")
            expect(qr).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=qr.element_handle())
            page.get_by_test_id("add-msg").evaluate("el => el.hidden = true")  # the earlier 409, not news
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            if os.environ.get("WASYNC_UPDATE_DOCS") == "1":  # the README's copy, refreshed on purpose
                shutil.copyfile(SCREENSHOT, DOCS_COPY)

            # --- pairing by phone code: a bad number is refused with the API's message --------------
            card.get_by_test_id("pair-phone").fill("12")
            card.get_by_test_id("pair-phone-submit").click()
            expect(card.get_by_test_id("card-msg")).to_contain_text("refused: phone must be")
            card.get_by_test_id("pair-phone").fill(SCANNED)
            card.get_by_test_id("pair-phone-submit").click()
            expect(card.get_by_test_id("pair-code")).to_have_text(re.compile(r"^[A-Z0-9]{4}-?[A-Z0-9]{4}$"))

            # --- remove (after a confirm) takes the card away -------------------------------------
            florist.get_by_test_id("remove-btn").click()
            expect(florist).to_have_count(0)
            assert "florist" in dialogs[-1]
            # Its actor stops a moment after the removal: until then the health still answers.
            wait_for(lambda: daemon.get("/api/whatsapp/accounts/florist/health", token=TOKEN)[0] == 404,
                     what="florist gone")

            # --- log out, and a token the daemon refuses, both lead back to the login form --------
            page.get_by_test_id("logout").click()
            expect(page.get_by_test_id("login")).to_be_visible()
            expect(page.locator("[data-account]")).to_have_count(0)
            assert page.evaluate("sessionStorage.length") == 0
            page.evaluate("sessionStorage.setItem('wasync.adminToken', 'stale-token')")
            page.reload()
            expect(page.get_by_test_id("login-error")).to_contain_text("refused")
            assert page.evaluate("sessionStorage.length") == 0

            assert TOKEN not in page.url
        finally:
            browser.close()

    assert not page_errors, page_errors
    assert requests
    leaked = [url for url, _ in requests if TOKEN in url]
    assert not leaked, leaked
    api_auth = {auth for url, auth in requests if "/api/" in url} - {None}
    assert api_auth <= {f"Bearer {TOKEN}", "Bearer not-the-token", "Bearer stale-token"}
    assert f"Bearer {TOKEN}" in api_auth
