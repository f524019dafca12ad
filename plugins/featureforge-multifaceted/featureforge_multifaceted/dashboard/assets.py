"""The dashboard's HTML, CSS and JavaScript (inline in each page; no library, no network)."""

from __future__ import annotations

import html

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1150px;color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}th.sort{cursor:pointer;text-decoration:underline dotted}
.controls{margin:.8em 0;display:flex;gap:1em;align-items:center;flex-wrap:wrap}input,select{font-size:1em;padding:.2em .4em}
.ctx{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;margin:.12em 0;padding:.1em .3em;border-left:3px solid #eee}
.ctx .v{color:#888;display:inline-block;min-width:5em}.tok{border-radius:2px}.tok.hit{outline:2px solid #c44e52}
.facet{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin:.7em 0;background:#fcfcfc}
.facet h3{margin:.1em 0 .3em 0;font-size:1em}.note{color:#666;font-size:.9em}.pill{background:#eef;border-radius:3px;padding:0 .3em;margin-right:.3em}
.cols{display:flex;gap:2em;flex-wrap:wrap}svg text{font-size:10px;fill:#555}#status{color:#999;font-size:.8em}
"""

COMMON_JS = r"""
"use strict";
window.onerror = function (msg) { var s = document.getElementById("status"); if (s) { s.textContent = "error: " + msg; s.dataset.state = "error"; } };
function el(tag, attrs, kids) {
  var node = document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) {
    if (k === "text") node.textContent = attrs[k]; else if (k.slice(0, 5) === "data-") node.setAttribute(k, attrs[k]); else node[k] = attrs[k];
  });
  (kids || []).forEach(function (c) { if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
  return node;
}
function fmt(v) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  var a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
}
function num(key, v) { return el("td", {className: "num", "data-key": key, "data-value": JSON.stringify(v), text: fmt(v)}); }
function ready(what) { var s = document.getElementById("status"); if (s.dataset.state !== "error") { s.textContent = "ready: " + what; s.dataset.state = "ready"; } }
function fail(what) { var s = document.getElementById("status"); s.textContent = what; s.dataset.state = "missing"; }
"""

INDEX_JS = COMMON_JS + r"""
var FF = null, view = {key: "density", desc: true, query: "", limit: 200};
function ffIndex(data) { FF = data; }
function renderIndex() {
  if (!FF) { fail("data/index.js did not load: rerun featureforge dashboard"); return; }
  document.title = FF.title;
  document.getElementById("title").textContent = FF.title;
  var s = FF.summary, sum = document.getElementById("summary");
  [["rows", "rows streamed"], ["rows_per_second", "rows/s (collect)"], ["d_dict", "latents"], ["live", "live"], ["dead", "dead"],
   ["analysed", "analysed"], ["mean_facets", "mean facets"], ["multi_facet_fraction", "multi-facet fraction"]].forEach(function (p) {
    sum.appendChild(el("tr", {}, [el("td", {text: p[1]}), num(p[0], s[p[0]])]));
  });
  var note = s.output_effects ? "output-token effects shown" : "no output-token effects: " + s.output_effects_note;
  document.getElementById("note").textContent = note;
  var params = new URLSearchParams(location.search);  // index.html?q=...&sort=max_act&order=asc opens a view
  if (params.get("q")) { view.query = params.get("q").trim().toLowerCase(); document.getElementById("q").value = params.get("q"); }
  if (FF.columns.indexOf(params.get("sort")) >= 0) { view.key = params.get("sort"); document.getElementById("sort").value = view.key; }
  if (params.get("order") === "asc") { view.desc = false; document.getElementById("order").value = "asc"; }
  document.getElementById("q").oninput = function (e) { view.query = e.target.value.trim().toLowerCase(); view.limit = 200; table(); };
  document.getElementById("sort").onchange = function (e) { view.key = e.target.value; table(); };
  document.getElementById("order").onchange = function (e) { view.desc = e.target.value === "desc"; table(); };
  document.getElementById("more").onclick = function () { view.limit += 500; table(); };
  table();
  ready("index");
}
function table() {
  var cols = FF.columns, k = cols.indexOf(view.key), q = view.query;
  var rows = FF.rows.filter(function (r) { return !q || String(r[0]) === q || String(r[5]).toLowerCase().indexOf(q) >= 0; });
  rows.sort(function (a, b) { var d = a[k] - b[k]; if (d === 0) d = a[0] - b[0]; return view.desc ? -d : d; });
  var body = document.getElementById("rows");
  body.textContent = "";
  rows.slice(0, view.limit).forEach(function (r) {
    body.appendChild(el("tr", {"data-id": r[0]}, [
      el("td", {}, [el("a", {href: "feature.html?id=" + r[0], text: "#" + r[0]})]),
      num("count", r[1]), num("density", r[2]), num("max_act", r[3]), num("facets", r[4]), el("td", {text: r[5]})]));
  });
  document.getElementById("shown").textContent = Math.min(rows.length, view.limit) + " of " + rows.length + " features";
  document.getElementById("more").style.display = rows.length > view.limit ? "" : "none";
}
"""

INDEX_BODY = """
<h1 id="title">Feature dashboard</h1>
<div id="status" data-state="loading">loading</div>
<table id="summary"></table>
<p class="note" id="note"></p>
<div class="controls">
  <input id="q" placeholder="search: feature id or token" size="28">
  <label>sort by <select id="sort"><option value="density">density</option><option value="max_act">max activation</option>
  <option value="facets">facets</option><option value="count">count</option><option value="id">id</option></select></label>
  <select id="order"><option value="desc">descending</option><option value="asc">ascending</option></select>
  <span id="shown" class="note"></span>
</div>
<table><thead><tr><th>feature</th><th class="num">count</th><th class="num">density</th><th class="num">max act</th><th class="num">facets</th><th>top tokens</th></tr></thead>
<tbody id="rows"></tbody></table>
<button id="more">show more</button>
<script src="data/index.js"></script>
<script>renderIndex();</script>
"""

FEATURE_JS = COMMON_JS + r"""
function ffFeature(f) {
  document.title = "Feature " + f.id;
  document.getElementById("title").textContent = "Feature #" + f.id;
  var st = document.getElementById("stats");
  [["count", "firing rows"], ["density", "density"], ["max_act", "max activation"], ["mean_act", "mean activation when firing"]].forEach(function (p) {
    st.appendChild(el("tr", {}, [el("td", {text: p[1]}), num(p[0], f[p[0]])]));
  });
  st.appendChild(el("tr", {}, [el("td", {text: "facets"}), num("facets", f.facets.k)]));
  document.getElementById("hist").appendChild(histogram(f.histogram));
  var top = document.getElementById("top");
  f.top.forEach(function (ex) { top.appendChild(example(ex, f.max_act)); });
  var bands = document.getElementById("bands");
  f.bands.forEach(function (b, i) {
    var box = el("div", {className: "facet", "data-band": i}, [el("h3", {text: "Band " + (i + 1) + ": " + fmt(b.lo) + " to " + fmt(b.hi) + " (" + fmt(100 * b.share) + "% of the sample)"})]);
    b.examples.forEach(function (ex) { box.appendChild(example(ex, f.max_act)); });
    bands.appendChild(box);
  });
  var facets = document.getElementById("facets");
  var sil = Object.keys(f.facets.silhouettes).map(function (k) { return "k=" + k + ": " + fmt(f.facets.silhouettes[k]); }).join(", ");
  var nul = f.facets.null_silhouette === null || f.facets.null_silhouette === undefined ? "" : "; a Gaussian with the same covariance: " + fmt(f.facets.null_silhouette);
  facets.appendChild(el("p", {className: "note", text: "silhouette by k: " + (sil || "too few examples to cluster") + nul}));
  if (f.map) facets.appendChild(el("div", {}, [el("div", {className: "note", text: "top examples, " + f.map.method + " map, coloured by facet"}), scatter(f.map)]));
  f.facets.items.forEach(function (fc, i) {
    var box = el("div", {className: "facet", "data-facet": i}, [el("h3", {style: "color:" + COLOURS[i % COLOURS.length], text: "Facet " + (i + 1) + ": " + fc.size + " of the top examples (" + fmt(100 * fc.share) + "%), mean activation " + fmt(fc.mean_act)})]);
    if (fc.tokens) box.appendChild(el("p", {}, fc.tokens.map(function (t) { return el("span", {className: "pill", text: JSON.stringify(t.token) + " \u00d7" + t.count}); })));
    box.appendChild(el("p", {className: "note", text: "prototype: the example nearest the facet's centre, then its nearest neighbours"}));
    fc.prototype.forEach(function (ex) { box.appendChild(example(ex, f.max_act)); });
    facets.appendChild(box);
  });
  var eff = document.getElementById("effects");
  if (f.effects) {
    eff.appendChild(el("div", {className: "cols"}, ["promoted", "suppressed"].map(function (side) {
      return el("table", {}, [el("tr", {}, [el("th", {text: side}), el("th", {className: "num", text: "logit effect"})])].concat(
        f.effects[side].map(function (t) { return el("tr", {}, [el("td", {text: JSON.stringify(t.token)}), num("effect", t.effect)]); })));
    })));
  } else {
    eff.appendChild(el("p", {className: "note", text: "no output-token effects for this dictionary (see the index page)"}));
  }
  steering(f.steering);
  matches(f.matches);
  sites(f.sites);
  ready("feature " + f.id);
}
function sites(s) {  // sites_page.py: a transcoder's source and target, a crosscoder's decoder-norm share per site
  var box = document.getElementById("sites");
  if (!s) { box.appendChild(el("p", {className: "note", text: "one site: the latent is read and written at the store's hook"})); return; }
  box.appendChild(el("p", {className: "note", text: "read at " + s.reads.join(", ") + "; written at " + s.writes.map(function (w) { return w.site; }).join(", ")}));
  var rows = [el("tr", {}, [el("th", {text: "written at"}), el("th", {className: "num", text: "decoder norm"}), el("th", {className: "num", text: "share"})])];
  s.writes.forEach(function (w) { rows.push(el("tr", {className: "site"}, [el("td", {text: w.site}), num("norm", w.norm), num("share", w.share)])); });
  box.appendChild(el("table", {}, rows));
}
function matches(m) {  // from featureforge compare (-o compare=FOLDER): this latent's best partner in each other run
  var box = document.getElementById("matches");
  if (!m) { box.appendChild(el("p", {className: "note", text: "no comparison (featureforge compare RUN OTHER --out C, then dashboard ... -o compare=C)"})); return; }
  var rows = [el("tr", {}, ["run", "best latent", "activation ρ", "Hungarian partner", "its ρ", "decoder best", "decoder cos", "shared"].map(function (h) { return el("th", {text: h}); }))];
  m.forEach(function (r) {
    rows.push(el("tr", {className: "match"}, [el("td", {text: r.run}), el("td", {text: String(r.latent)}), num("activation", r.activation),
      el("td", {text: String(r.hungarian)}), num("hungarian_activation", r.hungarian_activation),
      el("td", {text: r.decoder_latent === undefined ? "n/a" : String(r.decoder_latent)}), num("decoder", r.decoder),
      el("td", {text: r.shared === undefined ? "n/a" : (r.shared ? "yes" : "no")})]));
  });
  box.appendChild(el("table", {}, rows));
}
function steering(s) {  // precomputed by steering_page.py: continuations without and with the latent added
  var box = document.getElementById("steering");
  if (!s) { box.appendChild(el("p", {className: "note", text: "no steering section (causal LMs: featureforge dashboard ... -o steer_tokens=12)"})); return; }
  box.appendChild(el("p", {className: "note", text: "prompt " + JSON.stringify(s.prompt) + "; latent added at every position, \u03b1 \u00d7 its typical value " + fmt(s.typical) + "; greedy"}));
  var rows = [el("tr", {}, [el("th", {text: "\u03b1"}), el("th", {text: "continuation"}), el("th", {className: "num", text: "KL next token"}), el("th", {text: "most promoted next tokens"})])];
  rows.push(el("tr", {className: "steer-clean"}, [el("td", {text: "0"}), el("td", {className: "ctx", text: s.clean}), el("td", {}), el("td", {})]));
  s.steps.forEach(function (st) {
    rows.push(el("tr", {className: "steered", "data-alpha": st.alpha}, [el("td", {text: fmt(st.alpha)}), el("td", {className: "ctx", text: st.text}), num("kl", st.kl),
      el("td", {}, st.promoted.slice(0, 5).map(function (t) { return el("span", {className: "pill", text: JSON.stringify(t.token) + " +" + fmt(t.gain)}); }))]));
  });
  box.appendChild(el("table", {}, rows));
}
function example(ex, top) {
  var line = el("div", {className: "ctx", "data-row": ex.row}, [el("span", {className: "v", text: fmt(ex.value)})]);
  if (!ex.tokens) { line.appendChild(document.createTextNode("row " + ex.row)); return line; }
  ex.tokens.forEach(function (t, i) {
    var a = Math.max(0, Math.min(1, ex.acts[i] / (top || 1)));
    var shown = t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");  // one line per context
    var span = el("span", {className: "tok" + (i === ex.index ? " hit" : ""), title: fmt(ex.acts[i]), text: shown});
    span.style.background = "rgba(255,120,0," + a.toFixed(3) + ")";
    line.appendChild(span);
  });
  return line;
}
var COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"];
function scatter(map) {
  var ns = "http://www.w3.org/2000/svg", size = 260, pad = 10, svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", size); svg.setAttribute("height", size);
  var xs = map.xy.map(function (p) { return p[0]; }), ys = map.xy.map(function (p) { return p[1]; });
  var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
  map.xy.forEach(function (p, i) {
    var c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", pad + (p[0] - x0) / ((x1 - x0) || 1) * (size - 2 * pad));
    c.setAttribute("cy", pad + (p[1] - y0) / ((y1 - y0) || 1) * (size - 2 * pad));
    c.setAttribute("r", 3); c.setAttribute("fill", COLOURS[map.facet[i] % COLOURS.length]); c.setAttribute("data-facet-point", map.facet[i]);
    svg.appendChild(c);
  });
  return svg;
}
function histogram(h) {
  var ns = "http://www.w3.org/2000/svg", w = 560, ht = 140, pad = 22, n = h.counts.length;
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", ht + pad);
  if (!n) return svg;
  var max = Math.max.apply(null, h.counts), bw = (w - 2 * pad) / n;
  h.counts.forEach(function (c, i) {
    var r = document.createElementNS(ns, "rect"), bh = c / max * ht;
    r.setAttribute("x", pad + i * bw); r.setAttribute("y", ht - bh); r.setAttribute("width", Math.max(bw - 1, 1)); r.setAttribute("height", bh);
    r.setAttribute("fill", "#4c72b0");
    var tip = document.createElementNS(ns, "title"); tip.textContent = c + " rows at 10^" + h.log10_edges[i] + " to 10^" + h.log10_edges[i + 1];
    r.appendChild(tip); svg.appendChild(r);
  });
  [[0, h.log10_edges[0]], [n, h.log10_edges[n]]].forEach(function (p) {
    var t = document.createElementNS(ns, "text"); t.setAttribute("x", pad + p[0] * bw - 12); t.setAttribute("y", ht + 14);
    t.textContent = fmt(Math.pow(10, p[1])); svg.appendChild(t);
  });
  return svg;
}
function loadFeature() {
  var m = /[?&]id=(\d+)/.exec(location.search);
  if (!m) { fail("no feature chosen: open feature.html?id=N from the index"); return; }
  var s = document.createElement("script");
  s.src = "data/feature_" + m[1] + ".js";
  s.onerror = function () { fail("feature " + m[1] + " was not analysed (no data/feature_" + m[1] + ".js)"); };
  document.body.appendChild(s);
}
"""

FEATURE_BODY = """
<p><a href="index.html">&larr; all features</a></p>
<h1 id="title">Feature</h1>
<div id="status" data-state="loading">loading</div>
<div class="cols"><table id="stats"></table><div><div class="note">activation histogram (log scale, firing rows)</div><div id="hist"></div></div></div>
<h2>Top activations</h2><div id="top"></div>
<h2>Facets</h2><div id="facets"></div>
<h2>Activation quantile bands</h2><div id="bands"></div>
<h2>Output-token effects</h2><div id="effects"></div>
<h2>Steering</h2><div id="steering"></div>
<h2>Best matches in compared runs</h2><div id="matches"></div>
<h2>Sites</h2><div id="sites"></div>
<script>loadFeature();</script>
"""


def page(title: str, body: str, script: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>{CSS}</style>\n<script>{script}</script>\n</head><body>{body}</body></html>\n")
