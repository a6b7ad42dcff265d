// Small SVG charts for the dashboard: stacked bars over time, lines over time, horizontal bars.
// No library, no network; colours come from the stylesheet's palette.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["--s1", "--s2", "--s3", "--s4", "--s5", "--s6", "--s7"];

  function color(i) { return `var(${PALETTE[i % PALETTE.length]})`; }

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "fill" || k === "stroke") el.style[k] = v; else el.setAttribute(k, v);
    }
    if (parent) parent.appendChild(el);
    return el;
  }

  function title(el, text) { svg("title", {}, el).textContent = text; }

  function empty(host, text) {
    host.replaceChildren();
    const div = document.createElement("div");
    div.className = "empty";
    div.textContent = text;
    host.appendChild(div);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10, 12, 16, 20]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function legend(host, series) {
    const div = document.createElement("div");
    div.className = "legend";
    series.forEach((s, i) => {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = s.color || color(i);
      span.append(sw, s.name);
      div.appendChild(span);
    });
    host.appendChild(div);
  }

  function frame(host, height) {
    host.replaceChildren();
    const width = Math.max(host.clientWidth || 0, 280);
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, host);
    return { root, width, height, left: 52, right: 8, top: 8, bottom: 22 };
  }

  function yAxis(f, max, fmt) {
    const plotH = f.height - f.top - f.bottom;
    for (let i = 0; i <= 4; i++) {
      const y = f.top + plotH - (plotH * i) / 4;
      svg("line", { x1: f.left, x2: f.width - f.right, y1: y, y2: y, class: "grid-line" }, f.root);
      svg("text", { x: f.left - 6, y: y + 4, "text-anchor": "end" }, f.root).textContent = fmt((max * i) / 4);
    }
  }

  function xLabels(f, labels, step, fmtX) {
    const n = labels.length, plotW = f.width - f.left - f.right;
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 70))));
    for (let i = 0; i < n; i += every) {
      const x = f.left + (plotW * (i + 0.5)) / n;
      svg("text", { x, y: f.height - 6, "text-anchor": "middle" }, f.root).textContent = fmtX(labels[i]);
    }
  }

  // labels: bucket start times; series: [{name, values, color?}], stacked.
  function bars(host, { labels, series, fmt = String, fmtX = String, height = 190 }) {
    if (!labels.length || !series.some(s => s.values.some(v => v > 0))) return empty(host, "no data in this window");
    const f = frame(host, height);
    const totals = labels.map((_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
    const max = niceMax(Math.max(...totals));
    yAxis(f, max, fmt);
    const plotW = f.width - f.left - f.right, plotH = f.height - f.top - f.bottom;
    const slot = plotW / labels.length, barW = Math.max(1, slot * 0.72);
    labels.forEach((label, i) => {
      let y = f.top + plotH;
      series.forEach((s, k) => {
        const v = s.values[i] || 0;
        if (v <= 0) return;
        const h = (plotH * v) / max;
        y -= h;
        const rect = svg("rect", { x: f.left + slot * i + (slot - barW) / 2, y, width: barW, height: Math.max(h, 0.5),
                                   rx: Math.min(2, barW / 3), fill: s.color || color(k), class: "bar" }, f.root);
        title(rect, `${fmtX(label)} · ${s.name}: ${fmt(v)}`);
      });
    });
    xLabels(f, labels, slot, fmtX);
    legend(host, series);
  }

  function lines(host, { labels, series, fmt = String, fmtX = String, height = 190 }) {
    const values = series.flatMap(s => s.values.filter(v => v != null));
    if (!labels.length || !values.length) return empty(host, "no data in this window");
    const f = frame(host, height);
    const max = niceMax(Math.max(...values));
    yAxis(f, max, fmt);
    const plotW = f.width - f.left - f.right, plotH = f.height - f.top - f.bottom, n = labels.length;
    series.forEach((s, k) => {
      const pts = [];
      s.values.forEach((v, i) => {
        if (v == null) return;
        pts.push([f.left + (plotW * (i + 0.5)) / n, f.top + plotH - (plotH * v) / max, v, labels[i], i]);
      });
      // one polyline per run of consecutive buckets: an empty bucket is a gap, not a slope
      let run = [];
      const flush = () => {
        if (run.length > 1) svg("polyline", { points: run.map(p => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" "),
                                              fill: "none", stroke: s.color || color(k), "stroke-width": 2,
                                              "stroke-linejoin": "round", class: "line" }, f.root);
        run = [];
      };
      pts.forEach((p, j) => { if (j && p[4] !== pts[j - 1][4] + 1) flush(); run.push(p); });
      flush();
      pts.forEach(p => {
        const dot = svg("circle", { cx: p[0], cy: p[1], r: 2.6, fill: s.color || color(k), class: "point" }, f.root);
        title(dot, `${fmtX(p[3])} · ${s.name}: ${fmt(p[2])}`);
      });
    });
    xLabels(f, labels, plotW / n, fmtX);
    legend(host, series);
  }

  // items: [{label, value, sub?}] drawn largest first.
  function hbars(host, { items, fmt = String, max: limit = 8 }) {
    items = items.filter(it => it.value > 0).sort((a, b) => b.value - a.value).slice(0, limit);
    if (!items.length) return empty(host, "nothing spent in this window");
    host.replaceChildren();
    const width = Math.max(host.clientWidth || 0, 280), row = 26, height = items.length * row + 4;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, host);
    const labelW = Math.min(160, width * 0.38), valueW = 78, barMax = width - labelW - valueW - 12;
    const top = items[0].value;
    items.forEach((it, i) => {
      const y = i * row + 4;
      const name = svg("text", { x: 0, y: y + 13 }, root);
      name.textContent = it.label.length > 24 ? it.label.slice(0, 23) + "…" : it.label;
      const w = Math.max(2, (barMax * it.value) / top);
      const rect = svg("rect", { x: labelW, y: y + 2, width: w, height: row - 10, rx: 3, fill: color(i), class: "bar" }, root);
      title(rect, `${it.label}: ${fmt(it.value)}${it.sub ? " · " + it.sub : ""}`);
      svg("text", { x: width - 2, y: y + 13, "text-anchor": "end" }, root).textContent = fmt(it.value);
    });
  }

  window.Charts = { bars, lines, hbars, empty, color };
})();
