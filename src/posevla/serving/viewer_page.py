"""The static page of the live plan viewer (``GET /viewer``), kept as a string so it ships with the package.

The page polls ``/viewer/state.json`` every 0.5 s; when the state's ``version`` changes it fetches that
version's frames (``/viewer/frame/<cam>.png?v=<version>``), decodes them, then redraws (no flicker, and
the overlay always sits on the frame it was computed for). Each
camera is one SVG whose user units are the frame's pixels (``viewBox = -0.5 -0.5 W H``: pixel centres at
integer coordinates, as the projected points sent by :mod:`posevla.serving.viewer`), shown at an integer
zoom so small frames stay crisp. Waypoints projected with K are filled dots, 2D-anchor fallbacks hollow
ones; the executed ee_pose chunk is dashed. The action chunk is a line plot (each dimension scaled to its
own range over the chunk) and a table of the values.
"""

from __future__ import annotations

__all__ = ["PAGE_HTML"]

PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>posevla live plan</title>
<style>
  body { margin: 0; padding: 12px 16px; background: #1e1e1e; color: #ddd;
         font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  h1 { font-size: 16px; margin: 0 0 4px 0; color: #fff; }
  #meta { color: #999; margin-bottom: 8px; word-break: break-all; }
  #status { margin-bottom: 10px; }
  #task { font-size: 15px; color: #fff; margin-bottom: 10px; }
  .waiting { color: #e0b050; font-size: 15px; }
  #views { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
  .card { background: #2a2a2a; padding: 8px; border-radius: 4px; }
  .card h2 { font-size: 13px; margin: 0 0 6px 0; color: #fff; }
  .card svg { display: block; background: #000; }
  .notes { color: #e0b050; font-size: 12px; margin-top: 4px; max-width: 480px; }
  .legend span { display: inline-block; margin-right: 10px; }
  .sw { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }
  #chunk { margin-top: 14px; }
  table { border-collapse: collapse; font: 11px/1.3 ui-monospace, monospace; margin-top: 6px; }
  td, th { padding: 1px 6px; text-align: right; border-bottom: 1px solid #333; }
  th { color: #aaa; font-weight: normal; }
  td.name { text-align: left; }
</style>
</head>
<body>
<h1>posevla &mdash; live plan viewer</h1>
<div id="meta"></div>
<div id="status" class="waiting">Waiting for the first request&hellip;</div>
<div id="task"></div>
<div id="views"></div>
<div id="chunk"></div>
<script>
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const DIM_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                    "#7f7f7f", "#bcbd22", "#17becf"];
let shown = -1;        // the state version on screen
let frameUrls = [];    // object URLs of the frames on screen
// a server with an API key accepts ?api_key=... (a browser cannot send the header): pass it on
const API_KEY = new URLSearchParams(location.search).get("api_key");
function withKey(u) {
  return API_KEY === null ? u : u + (u.includes("?") ? "&" : "?") + "api_key=" + encodeURIComponent(API_KEY);
}

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function div(cls, text, parent) {
  const d = document.createElement("div");
  if (cls) d.className = cls;
  if (text !== undefined) d.textContent = text;
  if (parent) parent.appendChild(d);
  return d;
}
function fmt(x, digits) { return (x === null || x === undefined) ? "-" : Number(x).toFixed(digits); }

function zoomFor(w, h) { return Math.max(1, Math.floor(480 / Math.max(w, h))); }

function drawView(v, state) {
  const card = div("card");
  const title = document.createElement("h2");
  title.textContent = v.camera + (v.width ? "  (" + v.width + "x" + v.height + ", K: " +
                      (v.K_source || "none") + ")" : "");
  card.appendChild(title);
  if (v.frame) {
    const z = zoomFor(v.width, v.height);
    const svg = el("svg", {width: v.width * z, height: v.height * z,
                           viewBox: "-0.5 -0.5 " + v.width + " " + v.height,
                           preserveAspectRatio: "none"}, card);
    svg.style.overflow = "hidden";
    const img = el("image", {x: -0.5, y: -0.5, width: v.width, height: v.height,
                             preserveAspectRatio: "none"}, svg);
    img.style.imageRendering = "pixelated";
    img.setAttribute("href", v.frame);
    const r = 4.5 / z, fs = 12 / z;
    for (const t of v.ee_tracks) {
      let seg = [];
      const flush = () => {
        if (seg.length > 1) el("polyline", {points: seg.join(" "), fill: "none", stroke: t.color,
          "stroke-width": 1.5, "stroke-dasharray": "5 4", "vector-effect": "non-scaling-stroke"}, svg);
        seg = [];
      };
      for (const p of t.points) {
        if (p === null) { flush(); continue; }
        seg.push(p[0] + "," + p[1]);
        el("circle", {cx: p[0], cy: p[1], r: r * 0.45, fill: t.color}, svg);
      }
      flush();
    }
    for (const t of v.tracks) {
      if (t.points.length > 1) {
        el("polyline", {points: t.points.map(p => p.u + "," + p.v).join(" "), fill: "none",
          stroke: t.color, "stroke-width": 2, "vector-effect": "non-scaling-stroke"}, svg);
      }
      const groups = [];  // waypoints that land on the same spot share one label: "arm 0,2,4"
      t.points.forEach((p, i) => {
        const filled = p.source === "K";
        el("circle", {cx: p.u, cy: p.v, r: r, fill: filled ? t.color : "none",
          stroke: filled ? "#000" : t.color,
          "stroke-width": filled ? 1 : 2, "vector-effect": "non-scaling-stroke"}, svg);
        const g = groups.find(q => Math.hypot(q.p.u - p.u, q.p.v - p.v) < 2 * r);
        if (g) g.idx.push(i); else groups.push({p: p, idx: [i]});
      });
      for (const g of groups) {
        const label = el("text", {x: g.p.u + 1.6 * r, y: g.p.v - 1.6 * r, "font-size": fs, fill: t.color,
          stroke: "#000", "stroke-width": 2.5, "paint-order": "stroke", "vector-effect": "non-scaling-stroke",
          "font-family": "sans-serif"}, svg);
        label.textContent = (g.idx[0] === 0 ? t.arm + " " : "") + g.idx.join(",") +
                            (g.p.z !== null ? " z=" + fmt(g.p.z, 2) : "");
      }
    }
    const legend = div("legend", undefined, card);
    for (const t of v.tracks) {
      const s = document.createElement("span");
      s.innerHTML = '<i class="sw"></i>';
      s.firstChild.style.background = t.color;
      s.appendChild(document.createTextNode(t.arm + " plan (" + t.points.length + ")"));
      legend.appendChild(s);
    }
    if (v.ee_tracks.length) {
      const s = document.createElement("span");
      s.innerHTML = '<i class="sw"></i>';
      s.firstChild.style.background = state.ee_color;
      s.appendChild(document.createTextNode("executed ee_pose chunk"));
      legend.appendChild(s);
    }
  }
  const notes = (v.notes || []).slice();
  if (v.no_object) notes.push("the VLM answered <no_object> for this view");
  if (notes.length) div("notes", notes.join("; "), card);
  return card;
}

function drawChunk(state, box) {
  box.innerHTML = "";
  const A = state.actions || [];
  if (!A.length) return;
  const H = A.length, D = A[0].length, names = state.action_names || [];
  const h = document.createElement("h2");
  h.style.fontSize = "13px";
  h.textContent = "action chunk being executed (" + H + " steps x " + D + " dims, " +
                  (state.action_space || "?") + "; each dim scaled to its own range)";
  box.appendChild(h);
  const W = 560, HT = 170, m = 8;
  const svg = el("svg", {width: W, height: HT}, box);
  el("rect", {x: 0, y: 0, width: W, height: HT, fill: "#262626"}, svg);
  for (let d = 0; d < D; d++) {
    const col = A.map(row => row[d]);
    const lo = Math.min(...col), hi = Math.max(...col), span = hi - lo;
    const pts = col.map((x, t) => {
      const px = m + (W - 2 * m) * (H > 1 ? t / (H - 1) : 0.5);
      const py = span > 1e-12 ? m + (HT - 2 * m) * (1 - (x - lo) / span) : HT / 2;
      return px + "," + py;
    });
    el("polyline", {points: pts.join(" "), fill: "none", stroke: DIM_COLORS[d % DIM_COLORS.length],
                    "stroke-width": 1.5}, svg);
  }
  const table = document.createElement("table");
  let html = "<tr><th>dim</th>" + A.map((_, t) => "<th>" + t + "</th>").join("") + "</tr>";
  for (let d = 0; d < D; d++) {
    const c = DIM_COLORS[d % DIM_COLORS.length];
    html += '<tr><td class="name"><i class="sw" style="background:' + c + '"></i>' +
            (names[d] || ("dim " + d)).replace(/[<>&]/g, "") + "</td>" +
            A.map(row => "<td>" + fmt(row[d], 3) + "</td>").join("") + "</tr>";
  }
  table.innerHTML = html;
  box.appendChild(table);
}

function render(state) {
  document.getElementById("meta").textContent = "checkpoint: " + (state.checkpoint || "?") +
    "  |  cameras: " + state.cameras.join(", ") + "  |  chunk size: " + (state.chunk_size ?? "?");
  const status = document.getElementById("status");
  if (state.status !== "live") {
    status.className = "waiting";
    status.textContent = "Waiting for the first request\u2026";
    return;
  }
  status.className = "";
  const t = state.timing || {}, l = state.latency_ms || {};
  const parts = ["request " + state.request];
  if (t.infer_ms !== undefined) parts.push("infer " + fmt(t.infer_ms, 1) + " ms");
  if (t.total_ms !== undefined) parts.push("total " + fmt(t.total_ms, 1) + " ms");
  const lp = Object.entries(l).map(([k, v]) => k + " " + fmt(v, 1)).join(", ");
  if (lp) parts.push("policy latency (ms): " + lp);
  parts.push("at " + new Date(state.time * 1000).toLocaleTimeString());
  if (!state.has_plan) parts.push("no pose-token plan in the result");
  status.textContent = parts.join("  |  ");
  document.getElementById("task").textContent = state.task ? "task: " + state.task : "";
  const views = document.getElementById("views");
  views.innerHTML = "";
  for (const v of state.views) views.appendChild(drawView(v, state));
  drawChunk(state, document.getElementById("chunk"));
}

class FrameGone extends Error {}

async function loadFrame(v) {
  // the frame of exactly this state's version, decoded before the redraw (no flicker, no mismatch)
  const resp = await fetch(withKey(v.frame), {cache: "no-store"});
  if (resp.status === 404) throw new FrameGone(v.camera);
  if (!resp.ok) throw new Error("frame " + v.camera + ": HTTP " + resp.status);
  const url = URL.createObjectURL(await resp.blob());
  const im = new Image();
  im.src = url;
  try { await im.decode(); } catch (err) { URL.revokeObjectURL(url); throw err; }
  return [v.camera, url];
}

async function poll() {
  try {
    const resp = await fetch(withKey("/viewer/state.json"), {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const state = await resp.json();
    if (state.version !== shown) {
      const urls = state.status === "live"
        ? Object.fromEntries(await Promise.all(state.views.filter(v => v.frame).map(loadFrame))) : {};
      for (const v of state.views || []) if (v.frame) v.frame = urls[v.camera];
      render(state);
      for (const u of frameUrls) URL.revokeObjectURL(u);
      frameUrls = Object.values(urls);
      shown = state.version;
    }
  } catch (err) {
    if (!(err instanceof FrameGone)) {  // a newer update replaced the frame: just poll again
      const status = document.getElementById("status");
      status.className = "waiting";
      status.textContent = "server unreachable (" + err.message + "); retrying\u2026";
      shown = -1;
    }
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
"""
