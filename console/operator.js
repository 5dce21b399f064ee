// ekyc-gateway operators' console. Every call is the admin API (/v1/...), the one the
// CLI uses, with Authorization: Bearer <admin token>; the token lives in
// sessionStorage: never in a URL or a cookie.
"use strict";

const TOKEN = "ekyc.adminToken";
let current = null;

async function api(method, path, body) {
  const response = await fetch("/v1" + path, {
    method,
    headers: Object.assign({ "Authorization": "Bearer " + sessionStorage.getItem(TOKEN) },
      body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let answer = null;
  try { answer = await response.json(); } catch { /* an empty or non-JSON answer */ }
  if (!response.ok) {
    const error = new Error((answer && answer.error && answer.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

function showError(message) { $("error").textContent = message || ""; }

function stateBadge(account) {
  if (!account.activated) return el("span", { class: "badge warn" }, "not activated");
  if (!account.enabled) return el("span", { class: "badge bad" }, "suspended");
  return el("span", { class: "badge ok" }, "active");
}

async function loadAccounts() {
  const search = $("search").value.trim();
  const answer = await api("GET", "/accounts?limit=200" + (search ? "&search=" + encodeURIComponent(search) : ""));
  const rows = answer.accounts.map((a) => el("tr", {
    class: "pick" + (current === a.id ? " selected" : ""), "data-account": a.id,
    onclick: () => select(a.id),
  }, el("td", {}, a.id, el("div", { class: "muted" }, a.name)), el("td", {}, stateBadge(a))));
  clear($("accounts-table")).append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Account"), el("th", {}, "State"))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 2, class: "muted" }, "No account matches.")))));
}

async function select(id) {
  current = id;
  $("new-credential").hidden = true;
  showError("");
  for (const row of document.querySelectorAll("tr.pick")) row.classList.toggle("selected", row.dataset.account === id);
  try {
    await loadAccount();
  } catch (e) {
    showError(e.message);
  }
}

async function loadAccount() {
  const id = current;
  const enc = encodeURIComponent(id);
  const [account, balance, bills, audit, daily, credentials] = await Promise.all([
    api("GET", `/accounts/${enc}`),
    api("GET", `/accounts/${enc}/balance`),
    api("GET", `/accounts/${enc}/bills`),
    api("GET", `/audit?account=${enc}&limit=50`),
    api("GET", `/accounts/${enc}/daily?days=30`),
    api("GET", `/accounts/${enc}/credentials`),
  ]);
  if (id !== current) return;
  $("empty").hidden = true;
  $("detail").hidden = false;
  $("account-title").textContent = `${account.id} · ${account.name}`;
  clear($("account-state")).append(stateBadge(account));
  $("account-balance").textContent = `${balance.balance} ${balance.currency || ""}`.trim();
  $("account-facts").textContent =
    `Created ${when(account.created_at)}` + (account.activated_at ? ` · activated ${when(account.activated_at)}` : "") +
    ` · rate limit ${account.rate_limit_qps === null ? "default" : account.rate_limit_qps + "/s"}` +
    ` · credit limit ${account.credit_limit === null ? "default" : account.credit_limit}`;
  $("activate-row").hidden = account.activated;
  clear($("flags")).append(account.suspensions.length
    ? table(["Suspension", "Reason", "Since"], account.suspensions.map((s) => [s.flag, s.reason, when(s.since)]))
    : el("p", { class: "muted" }, "No suspension."));
  $("resume").disabled = !account.suspensions.some((s) => s.flag === "manual");

  clear($("chart")).append(barChart(daily.days.map((d) => ({ label: d.day, value: d.calls })), `Calls per day of ${id}`),
    el("p", { class: "muted" }, `${daily.days.reduce((n, d) => n + d.calls, 0).toLocaleString()} calls in 30 days`));

  clear($("bills-table")).append(table(["Bill", "Month", "Total", "Status", "Issued", "Due"],
    bills.bills.slice().reverse().map((b) =>
      [b.id, b.month, `${b.total} ${b.currency}`, statusBadge(b.status), when(b.issued_at), when(b.due_at)]),
    [2]));

  clear($("audit-table")).append(table(["When", "Who", "What"],
    audit.entries.map((e) => [when(e.at), e.actor, e.action])));

  const list = credentials.credentials || [];
  clear($("credentials-table")).append(list.length
    ? table(["SecretId", "Status", "Created", "Revoked", ""], list.map((c) => [
      c.secret_id, statusBadge(c.status), when(c.created_at), when(c.revoked_at),
      c.status === "active"
        ? el("button", { class: "danger", "data-revoke": c.secret_id, onclick: () => revoke(c.secret_id) }, "Revoke")
        : "",
    ]))
    : el("p", { class: "muted" }, "No credential yet."));
  await loadUsage(true);
}

/** Usage of the month picked; on opening an account, the newest month with calls
    (the current billing month when it has some or there are none at all). */
async function loadUsage(opening) {
  const enc = encodeURIComponent(current);
  let usage = await api("GET", `/accounts/${enc}/usage` + (opening ? "" : `?month=${$("usage-month").value}`));
  const months = [...new Set([usage.current_month, ...usage.months_with_calls])].sort().reverse();
  const select = clear($("usage-month"));
  for (const month of months) select.append(el("option", { value: month }, month));
  if (opening && usage.total === 0 && usage.months_with_calls.length) {
    usage = await api("GET", `/accounts/${enc}/usage?month=${usage.months_with_calls[0]}`);
  }
  select.value = usage.month;
  clear($("usage-table")).append(
    table(["Action", "Calls"], Object.entries(usage.actions).map(([action, calls]) => [action, calls.toLocaleString()]), [1]),
    el("p", { class: "muted" }, `${usage.total.toLocaleString()} calls in ${usage.month}`));
}

/** The webhook outbox, newest first: what each event is, where its delivery stands,
    and a retry for any of them (the delivery workers send it; this page sends nothing). */
async function loadWebhooks() {
  $("webhooks-error").textContent = "";
  const status = $("webhooks-status").value;
  const answer = await api("GET", "/webhooks/events?limit=100" + (status ? "&status=" + status : ""));
  $("webhooks-endpoints").textContent = answer.endpoints.length
    ? "Endpoints: " + answer.endpoints.join(", ")
    : "No endpoint configured: events wait in the outbox.";
  const rows = answer.events.map((e) => [
    when(e.created),
    e.type,
    statusBadge(e.status),
    String(e.attempts),
    e.status === "delivered" ? "delivered " + when(e.delivered) : e.status === "pending" ? "next " + when(e.next_attempt) : "",
    el("span", { class: "error-text", title: e.id }, e.last_error || ""),
    el("button", { class: "retry", "data-event": e.id, onclick: () => retryWebhook(e.id) }, "Retry"),
  ]);
  clear($("webhooks-table")).append(table(["Created", "Type", "Status", "Attempts", "Delivery", "Last error", ""], rows, [3]));
}

async function retryWebhook(id) {
  $("webhooks-error").textContent = "";
  try {
    await api("POST", `/webhooks/events/${encodeURIComponent(id)}/retry`);
    await loadWebhooks();
  } catch (e) {
    $("webhooks-error").textContent = e.message;
  }
}

async function revoke(secretId) {
  if (!confirm(`Revoke ${secretId} for good? Calls signed with it are refused at once.`)) return;
  await act(() => api("DELETE", `/credentials/${encodeURIComponent(secretId)}`));
}

async function act(work) {
  showError("");
  try {
    await work();
    await Promise.all([loadAccount(), loadAccounts()]);
  } catch (e) {
    showError(e.message);
  }
}

function signedIn() {
  showSignedIn(true, "operator");
  loadAccounts().catch((e) => showError(e.message));
  loadWebhooks().catch((e) => { $("webhooks-error").textContent = e.message; });
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN);
  current = null;
  showSignedIn(false, "", message);
}

document.addEventListener("DOMContentLoaded", () => {
  $("usage-month").addEventListener("change", () => loadUsage(false).catch((e) => showError(e.message)));
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("create-error").textContent = "";
    const id = $("create-id").value.trim();
    try {
      await api("POST", "/accounts", { id, name: $("create-name").value.trim() });
      $("create-id").value = "";
      $("create-name").value = "";
      $("search").value = "";
      await loadAccounts();
      await select(id);
    } catch (e) {
      $("create-error").textContent = e.message;
    }
  });
  $("activate").addEventListener("click", () => act(() => api("POST", `/accounts/${encodeURIComponent(current)}/activate`)));
  $("rate-limit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("rate-limit").value.trim();
    const qps = text === "default" ? null : Number(text);
    act(async () => {
      if (qps !== null && !(Number.isInteger(qps) && qps > 0)) throw new Error("The rate limit is a whole number of calls per second, or default.");
      await api("PUT", `/accounts/${encodeURIComponent(current)}/rate-limit`, { qps });
      $("rate-limit").value = "";
    });
  });
  $("credit-limit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("credit-limit").value.trim();
    act(async () => {
      await api("PUT", `/accounts/${encodeURIComponent(current)}/credit-limit`, { credit_limit: text === "default" ? null : text });
      $("credit-limit").value = "";
    });
  });
  $("issue-credential").addEventListener("click", () => act(async () => {
    const created = await api("POST", `/accounts/${encodeURIComponent(current)}/credentials`);
    $("new-secret-id").textContent = created.secret_id;
    $("new-secret-key").textContent = created.secret_key;
    $("new-api-key").textContent = created.api_key;
    $("new-credential").hidden = false;
  }));
  let searchTimer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadAccounts().catch((e) => showError(e.message)), 200);
  });
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN, $("token").value.trim());
    $("token").value = "";
    try {
      await api("GET", "/accounts?limit=1");
      signedIn();
    } catch (e) {
      signOut(e.status === 401 ? "That token was refused." : e.message);
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  const refreshWebhooks = () => loadWebhooks().catch((e) => { $("webhooks-error").textContent = e.message; });
  $("webhooks-form").addEventListener("submit", (event) => { event.preventDefault(); refreshWebhooks(); });
  $("webhooks-status").addEventListener("change", refreshWebhooks);
  $("suspend-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const reason = $("suspend-reason").value.trim();
    act(async () => {
      await api("POST", `/accounts/${encodeURIComponent(current)}/suspend`, { reason });
      $("suspend-reason").value = "";
    });
  });
  $("resume").addEventListener("click", () => act(() => api("POST", `/accounts/${encodeURIComponent(current)}/resume`, {})));
  $("topup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const amount = $("topup-amount").value.trim();
    // One key per click: a double submit of the same form is recorded once.
    const key = "console-" + Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
    act(async () => {
      const answer = await api("POST", `/accounts/${encodeURIComponent(current)}/topups`, { amount, idempotency_key: key });
      $("topup-amount").value = "";
      $("topup-result").textContent = `Recorded ${answer.amount} ${answer.currency}; balance ${answer.balance}.`;
    });
  });
  if (sessionStorage.getItem(TOKEN)) signedIn();
});
