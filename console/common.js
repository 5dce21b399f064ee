// ekyc-gateway consoles: helpers shared by the tenants' and the operators' pages.
// DOM is built with textContent only (never innerHTML), so names and reasons typed by
// anyone are shown, not run. Secrets live in sessionStorage (this tab only).
"use strict";

const $ = (id) => document.getElementById(id);

/** Builds an element: el("td", {class: "num"}, "12", childNode, ...). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Shows a console's signed-in part, or its sign-in form with `message` (both
    consoles use the same ids: signin, app, signout, who, signin-error). */
function showSignedIn(signedIn, who, message) {
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("who").textContent = who || "";
  $("signin-error").textContent = message || "";
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

/** "YYYY-MM" of this month and the `count - 1` before it, newest first. */
function recentMonths(count) {
  const now = new Date();
  const out = [];
  for (let i = 0; i < count; i++) {
    const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1));
    out.push(d.toISOString().slice(0, 7));
  }
  return out;
}

/** A date for people, from the RFC 3339 time every API answer carries. */
function when(value) {
  if (value === null || value === undefined || value === "") return "";
  const date = new Date(value);
  return isNaN(date) ? String(value) : date.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function table(headers, rows, numeric) {
  const numericSet = new Set(numeric || []);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: numericSet.has(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.length
      ? rows.map((row) => el("tr", {}, row.map((cell, i) => el("td", { class: numericSet.has(i) ? "num" : null }, cell))))
      : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "None."))]));
}

function statusBadge(status) {
  // Bills (paid, open, overdue), webhook events (delivered, pending, failed), credentials.
  const kind = { paid: "ok", overdue: "bad", open: "warn", delivered: "ok", pending: "warn", failed: "bad",
    active: "ok", revoked: "bad" }[
    String(status).toLowerCase()] || "warn";
  return el("span", { class: "badge " + kind }, status);
}

/** A bar chart of [{label, value}] as inline SVG; the last label of each 7 is shown. */
function barChart(points, title) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 600, height = 180, left = 40, bottom = 22, top = 10;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const max = Math.max(1, ...points.map((p) => p.value));
  const plotW = width - left - 4, plotH = height - bottom - top;
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH - fraction * plotH;
    add("line", { x1: left, x2: width - 4, y1: y, y2: y });
    add("text", { x: left - 4, y: y + 3, "text-anchor": "end" }, Math.round(max * fraction).toLocaleString());
  }
  const step = plotW / Math.max(1, points.length);
  points.forEach((p, i) => {
    const h = (p.value / max) * plotH;
    const bar = add("rect", { class: "bar", x: left + i * step + 1, y: top + plotH - h, width: Math.max(1, step - 2), height: h,
                              "data-day": p.label, "data-calls": p.value });
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${p.label}: ${p.value.toLocaleString()} calls`;
    bar.appendChild(tip);
    if ((points.length - 1 - i) % 7 === 0) {
      add("text", { x: left + i * step + step / 2, y: height - 6, "text-anchor": "middle" }, p.label.slice(5));
    }
  });
  return svg;
}
