// ekyc-gateway tenants' console. Every call is the tenant API of the data listener
// (POST / with X-TC-Action, Authorization: Bearer <API key>), the same one the SDKs
// and curl use. The key lives in sessionStorage: never in a URL or a cookie.
"use strict";

const KEY = "ekyc.apiKey";
let bills = { balance: null, currency: "" };

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

async function loadBills() {
  const answer = await tenantCall("DescribeBills");
  bills = { balance: answer.Balance, currency: answer.Currency };
  $("balance").textContent = `${answer.Balance} ${answer.Currency}`;
  const overdue = answer.Bills.filter((b) => b.Status === "overdue");
  $("due").textContent = overdue.length ? `${overdue.length} overdue bill(s)` : "";
  clear($("bills-table")).append(table(["Bill", "Month", "Total", "Status", "Issued", "Paid"],
    answer.Bills.map((b) => [b.BillId, b.Month, `${b.Total} ${b.Currency}`, statusBadge(b.Status), when(b.IssuedAt), when(b.PaidAt)]),
    [2]));
}

async function refresh() {
  showError("");
  try {
    const status = await loadStatus();
    await loadBills();
    showBanner(status);
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
