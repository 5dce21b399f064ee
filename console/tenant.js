// ekyc-gateway tenants' console. Every call is the tenant API of the data listener
// (POST / with X-TC-Action, Authorization: Bearer <API key>), the same one the SDKs
// and curl use. The key lives in sessionStorage: never in a URL or a cookie. Amounts
// are shown as the API writes them (decimal strings), never recomputed here: the
// browser's floating point must not touch money.
"use strict";

const KEY = "ekyc.apiKey";
let bills = { balance: null, currency: "" };
/** The last DescribeBills answer, which the invoice view is drawn from. */
let billsAnswer = null;
let accountId = "";

async function tenantCall(action, params) {
  const response = await fetch("/", {
    method: "POST",
    headers: {
      "Authorization": "Bearer " + sessionStorage.getItem(KEY),
      "Content-Type": "application/json",
      "X-TC-Action": action,
      "X-TC-Version": "2018-03-01",
    },
    body: JSON.stringify(params || {}),
    cache: "no-store",
  });
  let body;
  try { body = await response.json(); } catch { throw new Error(`HTTP ${response.status}`); }
  const answer = body.Response || {};
  if (answer.Error) {
    const error = new Error(answer.Error.Message || answer.Error.Code);
    error.code = answer.Error.Code;
    throw error;
  }
  return answer;
}

function showError(message) { $("error").textContent = message || ""; }

function usageTable(usage) {
  return table(["Action", "Calls", "Amount"],
    usage.Usage.map((u) => [u.Action, u.Calls.toLocaleString(), u.Amount === null ? "no price" : `${u.Amount} ${usage.Currency}`]),
    [1, 2]);
}

async function loadStatus() {
  const status = await tenantCall("DescribeServiceStatus");
  accountId = status.AccountId;
  $("who").textContent = status.AccountId;
  const suspended = status.Suspensions.length > 0;
  const state = $("service-state");
  clear(state).append(!status.Activated
    ? el("span", { class: "badge warn" }, "Not activated")
    : suspended ? el("span", { class: "badge bad" }, "Suspended") : el("span", { class: "badge ok" }, "Active"));
  $("activate-box").hidden = status.Activated;
  $("activated-at").textContent = status.ActivatedAt ? "Activated " + when(status.ActivatedAt) : "";
  $("rate-limit").textContent = `Rate limit: ${status.RateLimitQps} calls/s`;
  return status;
}

function showBanner(status) {
  const banner = clear($("banner"));
  banner.hidden = status.Suspensions.length === 0;
  for (const s of status.Suspensions) {
    let todo = s.Resolution;
    if (s.Flag === "Arrears" && bills.balance !== null && Number(bills.balance) < 0) {
      todo = `Pay the amount due, ${(-Number(bills.balance)).toFixed(2)} ${bills.currency}; the suspension lifts by itself as soon as it is paid.`;
    } else if (s.Flag === "Manual") {
      todo = "Contact the operator to have it lifted.";
    }
    banner.append(el("div", { "data-flag": s.Flag },
      el("strong", {}, s.Flag === "Arrears" ? "Service suspended: unpaid bills. " : "Service suspended by the operator. "),
      `Reason: ${s.Reason}. `, todo));
  }
}

async function loadThisMonth() {
  const usage = await tenantCall("DescribeCallUsage");
  $("this-month-name").textContent = usage.Month;
  $("month-calls").textContent = usage.TotalCalls.toLocaleString();
  $("month-amount").textContent = usage.EstimatedAmount === null ? "—" : `${usage.EstimatedAmount} ${usage.Currency}`;
  clear($("month-table")).append(usageTable(usage));
}

async function loadHistory() {
  const month = $("history-month").value;
  const usage = await tenantCall("DescribeCallUsage", { Month: month });
  clear($("history-table")).append(
    el("p", {}, `${usage.TotalCalls.toLocaleString()} calls in ${usage.Month}` +
      (usage.EstimatedAmount === null ? "" : `, ${usage.EstimatedAmount} ${usage.Currency} at current prices`)),
    usageTable(usage));
}

/** "1–100", "101 and more", or "every call" for a flat price. */
function callRange(from, to) {
  if (to === null || to === undefined) return from === 1 ? "every call" : `${from.toLocaleString()} and more`;
  return `${from.toLocaleString()}–${to.toLocaleString()}`;
}

async function loadPrices() {
  const list = await tenantCall("DescribePriceList");
  $("prices-month").textContent = list.Month;
  // Actions priced alike share a row (the built-in catalog is two dozen actions at one price).
  const groups = new Map();
  for (const p of list.PriceList) {
    const key = JSON.stringify([p.PricingMode, p.EffectiveFrom, p.Tiers]);
    if (!groups.has(key)) groups.set(key, { ...p, actions: [] });
    groups.get(key).actions.push(p.Action);
  }
  const rows = [];
  for (const p of groups.values()) {
    const actions = p.actions.join(", ");
    if (p.PricingMode === "Free") { rows.push([actions, "Free", "every call", "0", ""]); continue; }
    if (p.PricingMode === null) { rows.push([actions, "No price this month", "", "", ""]); continue; }
    p.Tiers.forEach((t, i) => rows.push([i ? "" : actions, i ? "" : p.PricingMode, callRange(t.FromCall, t.ToCall),
      `${t.UnitPrice} ${list.Currency}`, i ? "" : (p.EffectiveFrom || "always")]));
  }
  clear($("prices-table")).append(table(["Action", "Pricing", "Calls of the month", "Unit price", "In force since"], rows, [3]));
}

/** One line of a bill in a sentence: calls, unit price(s) and amount. */
function lineSummary(line) {
  const late = line.Kind === "LateUsage" ? ` (late calls of ${line.Month})` : "";
  const prices = line.UnitPrice !== null && line.UnitPrice !== undefined
    ? ` × ${line.UnitPrice}`
    : ` (${(line.Tiers || []).map((t) => `${t.Calls.toLocaleString()} × ${t.UnitPrice}`).join(" + ")})`;
  return el("div", { class: "line" }, `${line.Action}${late}: ${line.Calls.toLocaleString()} calls${prices} = ${line.Amount}`);
}

async function loadBills() {
  const answer = await tenantCall("DescribeBills");
  billsAnswer = answer;
  bills = { balance: answer.Balance, currency: answer.Currency };
  $("balance").textContent = `${answer.Balance} ${answer.Currency}`;
  const overdue = answer.Bills.filter((b) => String(b.Status).toLowerCase() === "overdue");
  $("due").textContent = overdue.length ? `${overdue.length} overdue bill(s)` : "";
  clear($("bills-table")).append(table(["Bill", "Month", "Lines", "Total", "Status", "Issued", "Paid", ""],
    answer.Bills.map((b) => [b.BillId, b.Month, (b.Lines || []).map(lineSummary), `${b.Total} ${b.Currency}`,
      statusBadge(b.Status), when(b.IssuedAt), when(b.PaidAt),
      el("button", { "data-invoice": b.BillId, onclick: () => { location.hash = "invoice/" + encodeURIComponent(b.BillId); } }, "Invoice")]),
    [3]));
  showRoute();
}

// ------------------------------------------------------------------ invoice

/** The calendar date of an RFC 3339 time in the billing time zone ("+08:00"). */
function billingDate(time, offset) {
  const m = /^([+-])(\d\d):(\d\d)$/.exec(offset || "") || ["", "+", "00", "00"];
  const shift = (m[1] === "-" ? -1 : 1) * (Number(m[2]) * 3600 + Number(m[3]) * 60);
  return new Date(Date.parse(time) + shift * 1000).toISOString().slice(0, 10);
}

/** The bill id the address asks for (#invoice/<id>), if any. */
function invoiceInRoute() {
  const m = /^#invoice\/(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function showRoute() {
  const id = invoiceInRoute();
  const bill = id && billsAnswer ? billsAnswer.Bills.find((b) => b.BillId === id) : null;
  document.body.classList.toggle("viewing-invoice", !!bill);
  $("invoice").hidden = !bill;
  document.title = bill ? `Invoice ${bill.BillId}` : "eKYC console";
  if (bill) renderInvoice(bill, billsAnswer.BillingUtcOffset);
}

function renderInvoice(bill, offset) {
  const date = (time) => billingDate(time, offset);
  $("inv-number").textContent = bill.BillId;
  $("inv-issued").textContent = date(bill.IssuedAt);
  // A due date shows when the bill carries one.
  const hasDue = bill.DueAt !== undefined && bill.DueAt !== null;
  $("inv-due-label").hidden = !hasDue;
  $("inv-due").hidden = !hasDue;
  $("inv-due").textContent = hasDue ? date(bill.DueAt) : "";
  $("inv-month").textContent = bill.Month;
  $("inv-status").textContent = bill.Status === "Paid" && bill.PaidAt ? `Paid on ${date(bill.PaidAt)}` : bill.Status;
  $("inv-account").textContent = accountId;
  const currency = bill.Currency;
  const rows = [];
  for (const line of bill.Lines || []) {
    const late = line.Kind === "LateUsage";
    const single = line.UnitPrice !== null && line.UnitPrice !== undefined;
    rows.push(el("tr", { class: "line" },
      el("td", {}, line.Action + (late ? " (late calls)" : "")),
      el("td", {}, line.Month),
      el("td", { class: "num" }, line.Calls.toLocaleString()),
      el("td", { class: "num" }, single ? `${line.UnitPrice}` : "by tier"),
      el("td", { class: "num" }, line.Amount)));
    if (!single || late) {
      for (const t of line.Tiers || []) {
        rows.push(el("tr", { class: "tier" },
          el("td", {}, `Calls ${callRange(t.FromCall, t.ToCall)} of the month`), el("td", {}, ""),
          el("td", { class: "num" }, t.Calls.toLocaleString()), el("td", { class: "num" }, t.UnitPrice),
          el("td", { class: "num" }, late ? "" : t.Amount)));
      }
    }
    if (late) {
      rows.push(el("tr", { class: "tier" }, el("td", { colspan: 5 },
        `${line.PreviouslyBilledCalls.toLocaleString()} calls of ${line.Month} were on an earlier bill; ` +
        "these calls continue its tiers, and this line charges what they add.")));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No calls.")));
  clear($("inv-lines")).append(el("table", { class: "invoice-lines" },
    el("thead", {}, el("tr", {},
      el("th", {}, "Description"), el("th", {}, "Period"), el("th", { class: "num" }, "Calls"),
      el("th", { class: "num" }, `Unit price (${currency})`), el("th", { class: "num" }, `Amount (${currency})`))),
    el("tbody", {}, rows)));
  $("inv-subtotal").textContent = `${bill.Subtotal || bill.Total} ${currency}`;
  $("inv-total").textContent = `${bill.Total} ${currency}`;
  $("inv-note").textContent = `Dates and the billing period are in the billing time zone, UTC${offset || "+00:00"}. ` +
    "The total is the subtotal of the lines, rounded half up to the billing step.";
}

async function refresh() {
  showError("");
  try {
    const status = await loadStatus();
    await loadBills();
    showBanner(status);
    await loadPrices();
    await loadThisMonth();
    await loadHistory();
  } catch (e) {
    if (String(e.code).startsWith("AuthFailure")) return signOut(e.message);
    showError(e.message);
  }
}

function signedIn() {
  showSignedIn(true, ""); // the account id shows once its status is in
  refresh();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  billsAnswer = null; // no invoice of the account stays on screen
  showRoute();
  showSignedIn(false, "", message);
}

document.addEventListener("DOMContentLoaded", () => {
  const select = $("history-month");
  for (const month of recentMonths(13).slice(1)) select.append(el("option", { value: month }, month));
  select.addEventListener("change", () => loadHistory().catch((e) => showError(e.message)));

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    try {
      await tenantCall("DescribeServiceStatus");
      signedIn();
    } catch (e) {
      signOut(e.message);
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", showRoute);
  $("invoice-back").addEventListener("click", () => { location.hash = ""; });
  $("invoice-print").addEventListener("click", () => window.print());
  $("activate").addEventListener("click", async () => {
    $("activate").disabled = true;
    try {
      await tenantCall("ActivateService");
      await refresh();
    } catch (e) {
      showError(e.message);
    } finally {
      $("activate").disabled = false;
    }
  });
  // Live figures: calls counted elsewhere show up without a reload.
  setInterval(() => { if (sessionStorage.getItem(KEY) && document.visibilityState === "visible") refresh(); }, 5000);
  if (sessionStorage.getItem(KEY)) signedIn();
});
