// wasync admin page: signs in with the admin token (kept in sessionStorage, sent only as a
// bearer header, never in a URL), polls the dashboard, and drives the account actions.
// Every value from the daemon is inserted with textContent: nothing here builds HTML.
"use strict";

(() => {
  const TOKEN_KEY = "wasync.adminToken";
  const DASHBOARD_EVERY_MS = 2000;
  const QR_EVERY_MS = 2500; // the daemon rotates QR codes every ~20 s
  const STATUSES = ["connected", "pairing", "connecting", "degraded", "disconnected", "needs_repair", "logged_out"];
  const ACCOUNT_ID = /^[A-Za-z0-9_-]{1,64}$/;

  const $ = (id) => document.getElementById(id);
  const session = { token: null, signedIn: false, open: false, timer: null, polling: false, again: false };
  const cards = new Map(); // accountId -> card

  // --- the admin API ----------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function send(method, path, body, token) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      return await fetch(path, init);
    } catch (err) {
      throw new ApiFailure(0, "network", "cannot reach the daemon (" + err.message + ")");
    }
  }

  async function failure(resp) {
    let code = "http_" + resp.status;
    let message = "HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : "");
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (_) { /* not JSON: keep the status line */ }
    return new ApiFailure(resp.status, code, message);
  }

  // A call with the session's token; a 401 ends the session (back to the login form).
  async function call(method, path, body) {
    const resp = await send(method, path, body, session.token);
    if (resp.ok) return resp.status === 204 ? null : resp.json();
    const err = await failure(resp);
    if (resp.status === 401) signOut("The daemon refused the admin token (" + err.message + "). Sign in again.");
    throw err;
  }

  const accountPath = (id, rest) => "/api/whatsapp/accounts/" + encodeURIComponent(id) + (rest || "");

  // --- session ----------------------------------------------------------------------------

  function showLogin(message) {
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("token").value = "";
    $("token").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = session.open;
    $("open-mode").hidden = !session.open;
  }

  function startSession(token, open, dashboard) {
    session.token = token;
    session.open = open;
    session.signedIn = true;
    showApp();
    render(dashboard);
    schedule(DASHBOARD_EVERY_MS);
  }

  function signOut(message) {
    sessionStorage.clear();
    session.token = null;
    session.signedIn = false;
    clearTimeout(session.timer);
    for (const card of [...cards.values()]) destroyCard(card);
    $("counts").replaceChildren();
    $("instance").textContent = "";
    $("updated").textContent = "";
    showLogin(message);
  }

  async function signIn(token) {
    const resp = await send("GET", "/api/status/dashboard", undefined, token);
    if (resp.status === 401) {
      const err = await failure(resp);
      throw new ApiFailure(401, err.code, "That token was refused (" + err.message + ").");
    }
    if (!resp.ok) throw await failure(resp);
    const dashboard = await resp.json();
    sessionStorage.setItem(TOKEN_KEY, token);
    startSession(token, false, dashboard);
  }

  async function boot() {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      session.token = saved;
      session.signedIn = true;
      showApp();
      poll();
      return;
    }
    // A daemon without ADMIN_TOKEN (loopback only) answers without one: no login needed.
    try {
      const resp = await send("GET", "/api/status/dashboard");
      if (resp.ok) {
        startSession(null, true, await resp.json());
        return;
      }
    } catch (_) { /* unreachable: the login form says so when used */ }
    showLogin();
  }

  // --- polling ----------------------------------------------------------------------------

  function schedule(delayMs) {
    clearTimeout(session.timer);
    if (session.signedIn && !document.hidden) session.timer = setTimeout(poll, delayMs);
  }

  async function poll() {
    if (!session.signedIn) return;
    if (session.polling) {
      session.again = true; // an action just changed something: look again right after
      return;
    }
    session.polling = true;
    session.again = false;
    try {
      const dashboard = await call("GET", "/api/status/dashboard");
      if (session.signedIn) {
        render(dashboard);
        $("banner").hidden = true;
      }
    } catch (err) {
      if (err.status !== 401) showBanner("Dashboard not updated: " + err.message);
    } finally {
      session.polling = false;
      schedule(session.again ? 0 : DASHBOARD_EVERY_MS);
    }
  }

  function showBanner(text) {
    const banner = $("banner");
    banner.textContent = text;
    banner.hidden = false;
  }

  // Pause while the tab is hidden; catch up at once when it is shown again.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(session.timer);
      for (const card of cards.values()) clearTimeout(card.qrTimer);
    } else if (session.signedIn) {
      poll();
      for (const card of cards.values()) if (card.pairing) pollQr(card);
    }
  });

  // --- formatting -------------------------------------------------------------------------

  function toMs(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return value;
    const ms = Date.parse(String(value));
    return Number.isNaN(ms) ? null : ms;
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  // A time as "3 min ago", with the exact local time as the tooltip.
  function setTime(el, value) {
    const ms = toMs(value);
    if (ms === null) {
      el.textContent = value ? String(value) : "never";
      el.title = "";
    } else {
      el.textContent = ago(ms);
      el.title = new Date(ms).toLocaleString();
    }
  }

  const statusLabel = (status) => String(status || "unknown").replace(/_/g, " ");

  function setStatusClass(el, status) {
    for (const cls of [...el.classList]) if (cls.startsWith("st-")) el.classList.remove(cls);
    el.classList.add("st-" + String(status).replace(/[^a-z_]/g, ""));
  }

  function showMessage(el, text, kind) {
    el.textContent = text;
    el.classList.toggle("msg-ok", kind === "ok");
    el.classList.toggle("msg-error", kind === "error");
    el.hidden = !text;
  }

  // --- rendering --------------------------------------------------------------------------

  function render(dashboard) {
    const accounts = dashboard.accounts || [];
    $("instance").textContent = dashboard.instanceId ? "instance " + dashboard.instanceId : "";
    renderCounts(dashboard.counts || {}, accounts.length);
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    if (dashboard.storeError) showBanner("The store could not be read; showing live state only: " + dashboard.storeError);

    const list = $("cards");
    const seen = new Set();
    let previous = null;
    for (const row of accounts) {
      const card = cards.get(row.accountId) || createCard(row.accountId);
      updateCard(card, row);
      const expected = previous ? previous.el.nextSibling : list.firstChild;
      if (expected !== card.el) list.insertBefore(card.el, expected);
      previous = card;
      seen.add(row.accountId);
    }
    for (const card of [...cards.values()]) if (!seen.has(card.id)) destroyCard(card);
    $("empty").hidden = accounts.length > 0;
  }

  function renderCounts(counts, total) {
    const items = [];
    const statuses = [...STATUSES, ...Object.keys(counts).filter((s) => !STATUSES.includes(s))];
    const totalItem = document.createElement("li");
    totalItem.className = "count";
    totalItem.dataset.testid = "count-total";
    totalItem.append(countNumber(total), " accounts");
    items.push(totalItem);
    for (const status of statuses) {
      const n = counts[status] || 0;
      const li = document.createElement("li");
      li.className = "count" + (n ? "" : " count-zero");
      li.dataset.testid = "count-" + status;
      const badge = document.createElement("span");
      badge.className = "badge";
      setStatusClass(badge, status);
      badge.textContent = statusLabel(status);
      li.append(countNumber(n), badge);
      items.push(li);
    }
    $("counts").replaceChildren(...items);
  }

  function countNumber(n) {
    const span = document.createElement("span");
    span.className = "count-n";
    span.textContent = String(n);
    return span;
  }

  function createCard(id) {
    const el = $("card-template").content.firstElementChild.cloneNode(true);
    const fields = {};
    for (const node of el.querySelectorAll("[data-field]")) fields[node.dataset.field] = node;
    const card = { id, el, fields, pairing: false, qrTimer: null, qrBusy: false, qrSvg: null, qrUrl: null, qrSerial: 0 };
    el.dataset.account = id;
    fields.accountId.textContent = id;
    el.querySelector('[data-action="repair"]').addEventListener("click", (ev) => repair(card, ev.currentTarget));
    el.querySelector('[data-action="backfill"]').addEventListener("click", (ev) => backfill(card, ev.currentTarget));
    el.querySelector('[data-action="remove"]').addEventListener("click", (ev) => remove(card, ev.currentTarget));
    fields.pairForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      pairPhone(card, ev.currentTarget);
    });
    cards.set(id, card);
    return card;
  }

  function destroyCard(card) {
    setPairing(card, false);
    card.el.remove();
    cards.delete(card.id);
  }

  function updateCard(card, row) {
    const f = card.fields;
    card.el.dataset.status = row.status;
    setStatusClass(card.el, row.status);
    setStatusClass(f.status, row.status);
    f.status.textContent = statusLabel(row.status);
    f.phone.textContent = row.phone ? "+" + String(row.phone).replace(/^\+/, "") : "no phone yet";

    // An account that needs repair says so once, in the repair line (its warning repeats it).
    const warning = row.degraded ? "Degraded" + (row.warning ? ": " + row.warning : "")
      : (row.needsRepair ? "" : row.warning || "");
    f.warning.textContent = warning;
    f.warning.hidden = !warning;
    const repair = !row.needsRepair ? "" : "Needs repair" + (row.repairReason ? ": " + row.repairReason : "")
      + (row.status === "pairing" ? ". Scan the QR code below to pair it again." : ". Press Re-pair and scan the new QR code.");
    f.repair.textContent = repair;
    f.repair.hidden = !repair;

    setTime(f.lastRealMessage, row.lastRealMessageMs);
    setTime(f.lastRealtimeMessage, row.lastRealtimeMessageAt);
    setTime(f.lastHistorySync, row.lastHistorySyncAt);
    renderBackfill(card, row);
    f.holder.textContent = row.leaseHolder
      ? String(row.leaseHolder) + (row.leaseEpoch !== null && row.leaseEpoch !== undefined ? " (epoch " + row.leaseEpoch + ")" : "")
      : "nobody";
    f.restarts.textContent = String(row.restarts || 0);

    const outbox = row.outbox && typeof row.outbox === "object" ? row.outbox : null;
    f.outboxLabel.hidden = f.outbox.hidden = !outbox;
    if (outbox) {
      const known = ["queued", "sending", "unknown", "failed"];
      const keys = [...known.filter((k) => k in outbox), ...Object.keys(outbox).filter((k) => !known.includes(k))];
      f.outbox.textContent = keys.map((k) => outbox[k] + " " + k).join(" · ") || "empty";
    }
    setPairing(card, row.status === "pairing");
  }

  function renderBackfill(card, row) {
    const f = card.fields;
    const run = row.backfillRunning;
    if (run) {
      const total = Number(run.threadsTotal) || 0;
      const done = Number(run.threadsDone) || 0;
      f.backfillText.textContent = (run.job || "backfill") + " running: " + done + "/" + total + " threads, "
        + (run.messages || 0) + " messages";
      f.backfillText.title = "";
      f.backfillProgress.max = Math.max(total, 1);
      f.backfillProgress.value = Math.min(done, Math.max(total, 1));
      f.backfillProgress.hidden = false;
      return;
    }
    f.backfillProgress.hidden = true;
    if (row.lastBackfillStatus) {
      const at = toMs(row.lastBackfillAt);
      f.backfillText.textContent = "last: " + row.lastBackfillStatus + (at === null ? "" : ", " + ago(at));
      f.backfillText.title = at === null ? "" : new Date(at).toLocaleString();
    } else {
      f.backfillText.textContent = "never run";
      f.backfillText.title = "";
    }
  }

  // --- pairing: the QR code and the phone code -------------------------------------------

  function setPairing(card, on) {
    if (on === card.pairing) return;
    card.pairing = on;
    card.fields.pairing.hidden = !on;
    if (on) {
      pollQr(card);
    } else {
      clearTimeout(card.qrTimer);
      clearQr(card);
      card.fields.pairCode.hidden = true;
    }
  }

  function clearQr(card) {
    const img = card.fields.qr;
    img.hidden = true;
    img.removeAttribute("src");
    if (card.qrUrl) URL.revokeObjectURL(card.qrUrl);
    card.qrUrl = null;
    card.qrSvg = null;
    card.fields.qrWait.hidden = false;
  }

  // The QR is fetched with the bearer header and shown from a blob: URL, so the token
  // never appears in an image URL; a new image only when the code rotated.
  async function pollQr(card) {
    clearTimeout(card.qrTimer);
    if (!card.pairing || card.qrBusy || document.hidden || !session.signedIn) return;
    card.qrBusy = true;
    try {
      const resp = await send("GET", accountPath(card.id, "/qr?format=svg"), undefined, session.token);
      if (!card.pairing) return;
      if (resp.ok) {
        const svg = await resp.text();
        if (svg !== card.qrSvg) {
          const url = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
          if (card.qrUrl) URL.revokeObjectURL(card.qrUrl);
          card.qrSvg = svg;
          card.qrUrl = url;
          card.qrSerial += 1;
          card.fields.qr.src = url;
          card.fields.qr.dataset.serial = String(card.qrSerial);
          card.fields.qr.hidden = false;
          card.fields.qrWait.hidden = true;
        }
      } else if (resp.status === 401) {
        signOut("The daemon refused the admin token. Sign in again.");
      } else {
        clearQr(card); // 404 no_qr: between codes, or pairing just ended
      }
    } catch (_) {
      /* the dashboard poll reports an unreachable daemon */
    } finally {
      card.qrBusy = false;
      if (card.pairing && !document.hidden) card.qrTimer = setTimeout(() => pollQr(card), QR_EVERY_MS);
    }
  }

  async function pairPhone(card, form) {
    const phone = form.elements.phone.value.trim();
    const button = form.querySelector("button");
    const message = card.fields.message;
    card.fields.pairCode.hidden = true;
    button.disabled = true;
    showMessage(message, "Asking WhatsApp for a pairing code (this can take up to a minute)…");
    try {
      const body = await call("POST", accountPath(card.id, "/pair-phone"), { phone });
      card.fields.pairCode.textContent = body.code;
      card.fields.pairCode.hidden = false;
      showMessage(message, "On the phone: Linked devices → Link a device → Link with phone number instead, "
        + "then type this code.", "ok");
    } catch (err) {
      showMessage(message, "Pairing code refused: " + err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // --- account actions --------------------------------------------------------------------

  async function act(card, button, run) {
    button.disabled = true;
    try {
      showMessage(card.fields.message, await run(), "ok");
    } catch (err) {
      if (err.status !== 401) showMessage(card.fields.message, err.message, "error");
    } finally {
      button.disabled = false;
    }
    poll();
  }

  // Re-pair is always a new pairing (regenerate-qr with newPairing): the stored session is
  // forgotten here and the phone scans a new QR code. A plain restart is not what anyone
  // pressing "Re-pair" means.
  function repair(card, button) {
    const question = "Re-pair " + card.id + "? Its current session is forgotten here and a new QR code "
      + "is shown: the phone must scan it again (WhatsApp > Linked devices).";
    if (!window.confirm(question)) return;
    act(card, button, async () => {
      await call("POST", "/api/whatsapp/regenerate-qr/" + encodeURIComponent(card.id), {newPairing: true});
      return "Pairing restarted: a new QR code appears in a few seconds.";
    });
  }

  function backfill(card, button) {
    act(card, button, async () => {
      const body = await call("POST", "/api/whatsapp/backfill/" + encodeURIComponent(card.id));
      return "Backfill started" + (body && body.runId ? " (" + body.runId + ")" : "") + ".";
    });
  }

  async function remove(card, button) {
    if (!window.confirm("Remove account " + card.id + "? Its WhatsApp session is stopped here.")) return;
    button.disabled = true;
    try {
      await call("DELETE", accountPath(card.id));
      destroyCard(card);
      showMessage($("add-msg"), "Removed " + card.id + ".", "ok");
    } catch (err) {
      if (err.status !== 401) showMessage(card.fields.message, err.message, "error");
    } finally {
      button.disabled = false;
    }
    poll();
  }

  async function addAccount(form) {
    const message = $("add-msg");
    const accountId = form.elements.accountId.value.trim();
    const phone = form.elements.phone.value.trim();
    if (!ACCOUNT_ID.test(accountId) || accountId.includes("__")) {
      showMessage(message, "The account id takes 1-64 letters, digits, '-' or '_' (not '__').", "error");
      return;
    }
    const body = phone ? { accountId, phone } : { accountId };
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await call("POST", "/api/whatsapp/accounts", body);
      form.reset();
      showMessage(message, "Added " + accountId + (phone ? "." : ": its QR code appears on its card."), "ok");
    } catch (err) {
      if (err.status !== 401) showMessage(message, "Not added: " + err.message, "error");
    } finally {
      button.disabled = false;
    }
    poll();
  }

  // --- wiring -----------------------------------------------------------------------------

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    const button = ev.currentTarget.querySelector("button");
    if (!token) return;
    button.disabled = true;
    try {
      await signIn(token);
    } catch (err) {
      showLogin(err.message);
    } finally {
      button.disabled = false;
    }
  });

  $("logout").addEventListener("click", () => signOut("Signed out."));

  $("add-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    addAccount(ev.currentTarget);
  });

  boot();
})();
