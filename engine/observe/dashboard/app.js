// The edgerules dashboard: reads /admin/policy, /metrics, /admin/usage and /admin/requests and
// draws them. The admin token, when the gateway needs one, lives in this tab's sessionStorage.
"use strict";
(function () {
  const TOKEN_KEY = "edgerules.adminToken";
  const THEME_KEY = "edgerules.theme";
  const RANGES = { "15m": [900, 30], "1h": [3600, 60], "24h": [86400, 48], "7d": [7 * 86400, 42] };   // seconds, buckets
  const REFRESH_MS = 10000;
  const $ = id => document.getElementById(id);
  const state = { token: sessionStorage.getItem(TOKEN_KEY) || "", rows: [], logOff: false, timer: null, busy: false };

  class NeedToken extends Error {}

  // ---- formatting ------------------------------------------------------------------------
  const nf = new Intl.NumberFormat("en-US");
  const fmtInt = v => nf.format(Math.round(v || 0));
  function fmtShort(v) {
    v = v || 0;
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "B";
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 1 : 0);
  }
  function fmtUSD(v) {
    v = v || 0;
    if (v === 0) return "$0";
    if (v < 0.01) return "$" + v.toPrecision(2);
    if (v < 100) return "$" + v.toFixed(2);
    return "$" + nf.format(Math.round(v));
  }
  const fmtMs = v => v == null ? "–" : (v >= 1000 ? (v / 1000).toFixed(2) + "s" : Math.round(v) + "");
  const fmtPct = v => v == null || !isFinite(v) ? "–" : (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%";
  function fmtTime(ts, span) {
    const d = new Date(ts * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    return span > 86400 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
  }
  function text(el, value) { el.textContent = value; return el; }
  function cell(tr, value, cls) { const td = document.createElement("td"); td.textContent = value; if (cls) td.className = cls; tr.appendChild(td); return td; }
  function badge(status) {
    const span = document.createElement("span");
    span.className = "badge " + (status >= 500 ? "bad" : status >= 400 ? "warn" : "ok");
    span.textContent = status;
    return span;
  }

  // ---- data ------------------------------------------------------------------------------
  async function api(path) {
    const headers = state.token ? { authorization: "Bearer " + state.token } : {};
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (resp.status === 401) throw new NeedToken();
    return resp;
  }

  async function json(path) {
    const resp = await api(path);
    const body = await resp.json().catch(() => ({}));
    return { ok: resp.ok, status: resp.status, body };
  }

  function parseMetrics(textBody) {
    const out = [];
    for (const line of textBody.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const p of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2].replace(/\\(.)/g, "$1");
      out.push({ name: m[1], labels, value: parseFloat(m[3]) });
    }
    return out;
  }
  const sum = (ms, name, pred) => ms.filter(m => m.name === name && (!pred || pred(m.labels))).reduce((a, m) => a + m.value, 0);

  function quantileFromHistogram(ms, name, q) {
    const buckets = ms.filter(m => m.name === name + "_bucket" && Object.keys(m.labels).length === 1);
    const total = buckets.find(b => b.labels.le === "+Inf");
    if (!total || !total.value) return null;
    const hit = buckets.find(b => b.value >= q * total.value);
    return hit && hit.labels.le !== "+Inf" ? parseFloat(hit.labels.le) * 1000 : null;
  }

  // ---- refresh ---------------------------------------------------------------------------
  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    const range = $("range").value, [span, n] = RANGES[range];
    try {
      const [policy, metricsResp, usage, grouped, page] = await Promise.all([
        json("/admin/policy"), api("/metrics"), json(`/admin/usage?since=${range}`),
        json(`/admin/usage?group_by=key,model&since=${range}`), json(`/admin/requests?since=${range}&limit=1000`)]);
      const metrics = metricsResp.ok ? parseMetrics(await metricsResp.text()) : [];
      state.logOff = !usage.ok;
      drawPolicy(policy.body, metrics);
      drawProviders(policy.body, metrics);
      const total = usage.ok ? (usage.body.data || [])[0] || null : null;
      drawKpis(total, metrics);
      const rows = page.ok ? page.body.data || [] : [];
      state.rows = rows;
      drawSeries(rows, span, n);
      drawSpend(grouped.ok ? grouped.body.data || [] : null);
      drawRequests();
      $("signout").classList.toggle("hidden", !state.token);
      showBanner(state.logOff ? "Request log off: usage, spend over time and recent requests need the request log "
        + "(--log-store). Totals below come from /metrics, since the gateway started." : "");
    } catch (err) {
      if (err instanceof NeedToken) askToken(state.token ? "that token was refused" : "");
      else showBanner("Could not reach the gateway: " + err.message, true);
    } finally {
      state.busy = false;
    }
  }

  function showBanner(message, bad) {
    const b = $("banner");
    b.classList.toggle("hidden", !message);
    b.classList.toggle("bad", !!bad);
    b.textContent = message;
  }

  function drawKpis(total, metrics) {
    const req = total ? total.requests : sum(metrics, "edgerules_requests_total");
    const errs = total ? total.errors : sum(metrics, "edgerules_requests_total", l => +l.status >= 400);
    text($("k-requests"), fmtInt(req));
    text($("k-requests-sub"), total ? "in this window" : "since the gateway started");
    text($("k-errors"), req ? fmtPct(errs / req) : "–").className = "value" + (req && errs / req > 0.05 ? " bad" : "");
    text($("k-errors-sub"), fmtInt(errs) + " errors");
    const p50 = total ? total.p50_ms : quantileFromHistogram(metrics, "edgerules_request_seconds", 0.5);
    const p95 = total ? total.p95_ms : quantileFromHistogram(metrics, "edgerules_request_seconds", 0.95);
    text($("k-latency"), `${fmtMs(p50)} / ${fmtMs(p95)}`);
    const tin = total ? total.input_tokens : sum(metrics, "gen_ai_client_token_usage_sum", l => l.gen_ai_token_type === "input");
    const tout = total ? total.output_tokens : sum(metrics, "gen_ai_client_token_usage_sum", l => l.gen_ai_token_type === "output");
    text($("k-tokens"), `${fmtShort(tin)} / ${fmtShort(tout)}`);
    text($("k-tokens-sub"), fmtInt(tin + tout) + " tokens");
    text($("k-spend"), fmtUSD(total ? total.cost_usd : sum(metrics, "edgerules_cost_usd_total")));
    const hits = total ? total.cache_hits : sum(metrics, "edgerules_cache_lookups_total", l => l.result === "hit");
    const lookups = sum(metrics, "edgerules_cache_lookups_total");
    const base = total ? req : lookups;
    text($("k-cache"), base ? fmtPct(hits / base) : "–");
    text($("k-cache-sub"), fmtInt(hits) + " hits" + (total ? " of all requests" : " of lookups"));
    const limited = sum(metrics, "edgerules_limited_total");
    text($("k-limited"), fmtInt(limited)).className = "value" + (limited ? " bad" : "");
  }

  function buckets(rows, span, n) {
    const now = Date.now() / 1000, width = span / n, start = Math.floor((now - span) / width) * width + width;
    const labels = Array.from({ length: n }, (_, i) => start + i * width);
    const at = ts => Math.min(n - 1, Math.floor((ts - start) / width));
    return { labels, at: ts => (ts < start ? -1 : at(ts)) };
  }

  function quantile(sorted, q) { return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null; }

  function topNames(rows, field, limit, weight) {
    const totals = new Map();
    for (const r of rows) totals.set(r[field] || "—", (totals.get(r[field] || "—") || 0) + weight(r));
    return [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, limit).map(e => e[0]);
  }

  function drawSeries(rows, span, n) {
    const off = "request log off";
    if (state.logOff) { ["chart-traffic", "chart-latency", "chart-tokens"].forEach(id => Charts.empty($(id), off)); text($("traffic-note"), ""); return; }
    const b = buckets(rows, span, n), fx = ts => fmtTime(ts, span);
    const ok = new Array(n).fill(0), c4 = new Array(n).fill(0), c5 = new Array(n).fill(0);
    const lat = Array.from({ length: n }, () => []);
    const tokens = r => (r.input_tokens || 0) + (r.output_tokens || 0);
    const models = topNames(rows, "model", 5, tokens);
    const perModel = models.map(() => new Array(n).fill(0)), other = new Array(n).fill(0);
    for (const r of rows) {
      const i = b.at(r.ts);
      if (i < 0) continue;
      (r.status >= 500 ? c5 : r.status >= 400 ? c4 : ok)[i]++;
      if (r.latency_ms != null) lat[i].push(r.latency_ms);
      const k = models.indexOf(r.model || "—");
      (k >= 0 ? perModel[k] : other)[i] += tokens(r);
    }
    Charts.bars($("chart-traffic"), { labels: b.labels, fmt: fmtShort, fmtX: fx, series: [
      { name: "2xx", values: ok, color: "var(--s2)" }, { name: "4xx", values: c4, color: "var(--s4)" },
      { name: "5xx", values: c5, color: "var(--s6)" }] });
    text($("traffic-note"), `${fmtInt(rows.length)} requests${rows.length >= 1000 ? " (the latest 1,000)" : ""}, per ${bucketName(span / n)}`);
    const sorted = lat.map(l => l.slice().sort((x, y) => x - y));
    Charts.lines($("chart-latency"), { labels: b.labels, fmt: fmtMs, fmtX: fx, series: [
      { name: "p50", values: sorted.map(s => quantile(s, 0.5)), color: "var(--s1)" },
      { name: "p95", values: sorted.map(s => quantile(s, 0.95)), color: "var(--s3)" }] });
    const series = models.map((m, k) => ({ name: m, values: perModel[k] }));
    if (other.some(v => v)) series.push({ name: "other", values: other, color: "var(--s7)" });
    Charts.bars($("chart-tokens"), { labels: b.labels, fmt: fmtShort, fmtX: fx, series });
  }

  function bucketName(seconds) {
    return seconds >= 3600 ? `${seconds / 3600} h` : `${seconds / 60} min`;
  }

  function drawSpend(groups) {
    if (groups === null) {
      Charts.empty($("chart-spend-key"), "request log off");
      Charts.empty($("chart-spend-model"), "request log off");
      const table = $("usage");
      table.tHead.replaceChildren();
      table.tBodies[0].replaceChildren();
      text($("usage-note"), "request log off");
      return;
    }
    const by = (field) => {
      const m = new Map();
      for (const g of groups) {
        const e = m.get(g[field] || "—") || { label: g[field] || "(no key)", value: 0, requests: 0 };
        e.value += g.cost_usd || 0; e.requests += g.requests;
        m.set(g[field] || "—", e);
      }
      return [...m.values()].map(e => ({ ...e, sub: fmtInt(e.requests) + " requests" }));
    };
    Charts.hbars($("chart-spend-key"), { items: by("key"), fmt: fmtUSD });
    Charts.hbars($("chart-spend-model"), { items: by("model"), fmt: fmtUSD });
    const table = $("usage"), head = document.createElement("tr");
    for (const h of ["key", "model", "requests", "errors", "tokens", "p95 ms", "cost"]) text(head.appendChild(document.createElement("th")), h);
    table.tHead.replaceChildren(head);
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const g of groups.slice(0, 12)) {
      const tr = body.insertRow();
      cell(tr, g.key || "(no key)"); cell(tr, g.model || "—"); cell(tr, fmtInt(g.requests)); cell(tr, fmtInt(g.errors));
      cell(tr, fmtShort((g.input_tokens || 0) + (g.output_tokens || 0))); cell(tr, fmtMs(g.p95_ms)); cell(tr, fmtUSD(g.cost_usd));
    }
    text($("usage-note"), groups.length > 12 ? `top 12 of ${groups.length}` : "");
  }

  function drawProviders(policy, metrics) {
    const body = $("providers").tBodies[0];
    body.replaceChildren();
    const health = policy.health || {};
    const names = Object.keys(policy.providers || health);
    if (!names.length) { const tr = body.insertRow(); cell(tr, "no providers"); return; }
    const head = body.insertRow();
    for (const h of ["provider", "state", "failures", "calls ok / failed", "latency"]) text(head.appendChild(document.createElement("th")), h);
    for (const name of names) {
      const h = health[name] || { open: false, failures: 0, latency_ms: {} };
      const tr = body.insertRow();
      cell(tr, name);
      const st = cell(tr, "");
      const dot = document.createElement("span");
      dot.className = "dot" + (h.open ? " bad" : "");
      st.append(dot, h.open ? "open circuit" : "healthy");
      cell(tr, fmtInt(h.failures));
      const okCalls = sum(metrics, "edgerules_upstream_calls_total", l => l.provider === name && l.outcome === "ok");
      const bad = sum(metrics, "edgerules_upstream_calls_total", l => l.provider === name && l.outcome !== "ok");
      cell(tr, `${fmtInt(okCalls)} / ${fmtInt(bad)}`);
      const lat = Object.values(h.latency_ms || {});
      cell(tr, lat.length ? fmtMs(lat.reduce((a, v) => a + v, 0) / lat.length) + " ms" : "–");
    }
  }

  function diagnostic(d, cls) {
    const div = document.createElement("div");
    div.className = "diag " + cls;
    const where = d.file ? `${d.file}:${d.line}:${d.column}: ` : "";
    div.textContent = `${where}${d.severity}[${d.code}]: ${d.message}`;
    return div;
  }

  function drawPolicy(policy, metrics) {
    text($("policy-version"), policy.version || "?");
    const pill = $("policy-pill");
    pill.className = "policy-pill" + (policy.last_error ? " bad" : (policy.warnings || []).length ? " warn" : "");
    text($("policy-loaded"), policy.loaded_at ? "loaded " + new Date(policy.loaded_at).toLocaleString() : "");
    const host = $("policy");
    host.replaceChildren();
    const dl = document.createElement("dl");
    dl.className = "kv";
    const reloads = sum(metrics, "edgerules_policy_reloads_total", l => l.result === "ok");
    const failed = sum(metrics, "edgerules_policy_reloads_total", l => l.result === "error");
    for (const [k, v] of [["version", policy.version], ["source", policy.path], ["rules", (policy.rules || []).length],
                          ["providers", Object.keys(policy.providers || {}).length], ["keys", (policy.keys || []).length],
                          ["reloads", `${fmtInt(reloads)} ok, ${fmtInt(failed)} failed`]]) {
      text(dl.appendChild(document.createElement("dt")), k);
      text(dl.appendChild(document.createElement("dd")), v == null ? "–" : String(v));
    }
    host.appendChild(dl);
    const err = policy.last_error;
    if (err) {
      text(host.appendChild(document.createElement("h3")), "Last reload failed" + (err.location ? " at " + err.location : ""));
      const box = document.createElement("div");
      box.className = "diag error";
      const pre = document.createElement("pre");
      pre.textContent = err.message;
      box.append(`${err.reason || "reload"} · ${new Date(err.at * 1000).toLocaleString()} · the previous policy stays live`, pre);
      host.appendChild(box);
    }
    const warnings = policy.warnings || [];
    text(host.appendChild(document.createElement("h3")), `Warnings (${warnings.length})`);
    if (!warnings.length) text(host.appendChild(document.createElement("div")), "none").className = "muted small";
    for (const w of warnings.slice(0, 3)) host.appendChild(diagnostic(w, "warning"));
    if (warnings.length > 3) text(host.appendChild(document.createElement("div")), `and ${warnings.length - 3} more (GET /admin/policy)`).className = "muted small";
  }

  // ---- requests table --------------------------------------------------------------------
  function fillSelect(select, values) {
    const keep = select.value, first = select.options[0];
    select.replaceChildren(first);
    for (const v of values) { const o = document.createElement("option"); o.value = v; o.textContent = v || "(none)"; select.appendChild(o); }
    select.value = values.includes(keep) ? keep : "";
  }

  function drawRequests() {
    const body = $("requests").tBodies[0];
    body.replaceChildren();
    if (state.logOff) { text($("requests-note"), "request log off"); return; }
    fillSelect($("f-key"), [...new Set(state.rows.map(r => r.key || ""))].filter(Boolean).sort());
    fillSelect($("f-model"), [...new Set(state.rows.map(r => r.model || ""))].filter(Boolean).sort());
    const q = $("q").value.trim().toLowerCase(), st = $("f-status").value, key = $("f-key").value, model = $("f-model").value;
    const shown = state.rows.filter(r => (!st || String(r.status)[0] === st[0]) && (!key || r.key === key)
      && (!model || r.model === model)
      && (!q || [r.id, r.key, r.model, r.route, r.error, r.error_code, r.status, (r.tags || []).join(" ")]
                   .some(v => v != null && String(v).toLowerCase().includes(q))));
    for (const r of shown.slice(0, 200)) {
      const tr = body.insertRow();
      tr.dataset.id = r.id;
      cell(tr, fmtTime(r.ts, 86401));
      cell(tr, "").appendChild(badge(r.status));
      cell(tr, r.key || "—"); cell(tr, r.model || "—"); cell(tr, r.route || "—"); cell(tr, r.cache || "");
      cell(tr, fmtMs(r.latency_ms), "r");
      cell(tr, r.input_tokens == null ? "–" : fmtInt((r.input_tokens || 0) + (r.output_tokens || 0)), "r");
      cell(tr, r.cost_usd == null ? "–" : fmtUSD(r.cost_usd), "r");
      cell(tr, (r.id || "").slice(-12), "mono");
    }
    text($("requests-note"), `${fmtInt(Math.min(shown.length, 200))} shown of ${fmtInt(shown.length)} matching, ${fmtInt(state.rows.length)} loaded`);
  }

  async function openRequest(id) {
    try {
      const { ok, body } = await json("/admin/requests/" + encodeURIComponent(id));
      text($("drawer-id"), id);
      const dl = $("drawer-fields");
      dl.replaceChildren();
      const row = ok ? body : { error: body.error ? body.error.message : "not found" };
      for (const k of ["time", "status", "error_code", "error", "key", "path", "model", "route", "attempts", "cache",
                       "rules", "tags", "policy", "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cached_tokens", "cost_usd"]) {
        if (!(k in row)) continue;
        text(dl.appendChild(document.createElement("dt")), k);
        const v = row[k];
        text(dl.appendChild(document.createElement("dd")), v == null || v === "" ? "–" : Array.isArray(v) ? v.join(", ") : String(v));
      }
      text($("drawer-json"), JSON.stringify(row, null, 2));
      $("drawer").classList.remove("hidden");
      $("drawer").setAttribute("aria-hidden", "false");
    } catch (err) {
      if (err instanceof NeedToken) askToken("");
    }
  }

  // ---- token, theme, wiring --------------------------------------------------------------
  function askToken(message) {
    $("login").classList.remove("hidden");
    text($("login-error"), message);
    $("login-token").focus();
  }

  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem(THEME_KEY, theme);
  }

  function schedule() {
    clearInterval(state.timer);
    if ($("auto").checked) state.timer = setInterval(refresh, REFRESH_MS);
  }

  function start() {
    const saved = localStorage.getItem(THEME_KEY);
    applyTheme(saved || (window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
    $("theme").addEventListener("click", () => { applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"); refresh(); });
    $("range").addEventListener("change", refresh);
    $("refresh").addEventListener("click", refresh);
    $("auto").addEventListener("change", schedule);
    $("q").addEventListener("input", drawRequests);
    for (const id of ["f-status", "f-key", "f-model"]) $(id).addEventListener("change", drawRequests);
    $("requests").tBodies[0].addEventListener("click", e => { const tr = e.target.closest("tr"); if (tr && tr.dataset.id) openRequest(tr.dataset.id); });
    $("drawer-close").addEventListener("click", () => { $("drawer").classList.add("hidden"); $("drawer").setAttribute("aria-hidden", "true"); });
    document.addEventListener("keydown", e => { if (e.key === "Escape") $("drawer-close").click(); });
    $("login-form").addEventListener("submit", e => {
      e.preventDefault();
      state.token = $("login-token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $("login").classList.add("hidden");
      refresh();
    });
    $("signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); state.token = ""; location.reload(); });
    let resizing;
    window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(refresh, 200); });
    refresh();
    schedule();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
