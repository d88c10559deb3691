// funcgrad graph player: draws the graph laid out by funcgrad (explain/html.py) as SVG and
// steps through the forward pass, the backward pass and the update. No dependencies.
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("fg-data").textContent);
  var G = D.geom, NS = "http://www.w3.org/2000/svg";
  var svg = document.getElementById("fg-svg");
  var panel = document.getElementById("fg-panel");
  var nodes = {}, groups = {}, els = {}, edgeEls = [], step = 0, timer = null, selected = null;
  D.nodes.forEach(function (n) { nodes[n.id] = n; });
  D.groups.forEach(function (g) { groups[g.id] = g; });

  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function box(parent, cls, id, item) {
    var g = el("g", { "class": cls, "data-id": id, "data-name": item.name }, parent);
    el("rect", { "class": "box", width: item.w, height: G.h }, g);
    el("text", { "class": "head", x: G.pad, y: 16 }, g, item.head);
    ["val", "grad", "upd"].forEach(function (c, k) {
      el("text", { "class": c, x: G.pad, y: 31 + 14 * k }, g, "");
    });
    g.addEventListener("click", function (ev) { ev.stopPropagation(); show(id); });
    return g;
  }

  var defs = el("defs", {}, svg);
  var mk = el("marker", { id: "fg-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto" }, defs);
  el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9a9a9a" }, mk);
  var frames = el("g", {}, svg), edgeLayer = el("g", {}, svg), nodeLayer = el("g", {}, svg);
  D.groups.forEach(function (g) {
    var fr = el("g", { "class": "gframe-g", "data-id": g.id }, frames);
    el("rect", { "class": "gframe", width: g.iw, height: g.ih }, fr);
    var t = el("text", { "class": "toggle", x: 8, y: 15, "data-toggle": g.id }, fr,
      "[−] " + g.name);
    t.addEventListener("click", function () { toggle(g.id); });
    var b = box(nodeLayer, "gbox", g.id, g);
    var tb = el("text", { "class": "toggle", x: g.w - 26, y: 16, "data-toggle": g.id }, b, "[+]");
    tb.addEventListener("click", function (ev) { ev.stopPropagation(); toggle(g.id); });
    els[g.id] = { box: b, frame: fr };
  });
  D.nodes.forEach(function (n) {
    els[n.id] = { box: box(nodeLayer, "node " + n.kind, n.id, n) };
  });
  D.edges.forEach(function (e, k) {
    var g = el("g", { "class": "edge", "data-edge": k }, edgeLayer);
    el("path", { "marker-end": "url(#fg-arrow)" }, g);
    var t = el("text", { "text-anchor": "middle" }, g);
    if (e.label) {
      el("tspan", { "class": "sym", dy: "-0.3em" }, t, e.label[0]);
      el("tspan", { dy: "1.2em" }, t, e.label[1]);
    }
    edgeEls.push(g);
  });

  function rep(id) {
    var gid = nodes[id] && nodes[id].group;
    return gid && groups[gid].collapsed ? gid : id;
  }
  function size(item) {
    if (item.members && !item.collapsed) return { w: item.iw, h: item.ih };
    return { w: item.w, h: G.h };
  }
  function layout() {
    var items = D.nodes.filter(function (n) { return !n.group; }).concat(D.groups);
    var cols = {};
    items.forEach(function (it) { (cols[it.col] = cols[it.col] || []).push(it); });
    var keys = Object.keys(cols).map(Number).sort(function (a, b) { return a - b; });
    var heights = keys.map(function (c) {
      cols[c].sort(function (a, b) { return a.row - b.row; });
      return cols[c].reduce(function (s, it) { return s + size(it).h + G.gapy; }, -G.gapy);
    });
    var maxH = Math.max.apply(null, heights.concat([G.h])), x = 12;
    keys.forEach(function (c, k) {
      var y = 12 + (maxH - heights[k]) / 2, w = 0;
      cols[c].forEach(function (it) {
        var s = size(it);
        it.x = x; it.y = y; y += s.h + G.gapy; w = Math.max(w, s.w);
        if (it.members && !it.collapsed) {
          it.members.forEach(function (m) {
            nodes[m].x = it.x + G.pad + nodes[m].ix;
            nodes[m].y = it.y + G.head + G.pad + nodes[m].iy;
          });
        }
      });
      x += w + G.gapx;
    });
    draw(x - G.gapx + 12, maxH + 24);
  }
  function place(e, it) { e.setAttribute("transform", "translate(" + it.x + "," + it.y + ")"); }
  function draw(width, height) {
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    var avail = document.getElementById("fg-canvas").clientWidth - 20;
    svg.style.maxWidth = width * 0.6 <= avail ? "100%" : "none";  // shrink a bit to fit
    svg.style.minWidth = Math.round(width * 0.6) + "px";
    D.groups.forEach(function (g) {
      els[g.id].box.classList.toggle("hidden", !g.collapsed);
      els[g.id].frame.classList.toggle("hidden", g.collapsed);
      place(g.collapsed ? els[g.id].box : els[g.id].frame, g);
    });
    D.nodes.forEach(function (n) {
      var vis = !n.group || !groups[n.group].collapsed;
      els[n.id].box.classList.toggle("hidden", !vis);
      if (vis) place(els[n.id].box, n);
    });
    var seen = {};
    D.edges.forEach(function (e, k) {
      var s = rep(e.s), d = rep(e.d), key = s + ">" + d, g = edgeEls[k];
      var hide = s === d || seen[key];
      seen[key] = true;
      g.classList.toggle("hidden", !!hide);
      if (hide) return;
      var S = nodes[s] || groups[s], T = nodes[d] || groups[d];
      var x1 = S.x + size(S).w, y1 = S.y + G.h / 2, x2 = T.x, y2 = T.y + G.h / 2;
      var dx = Math.max(30, (x2 - x1) / 2);
      g.firstChild.setAttribute("d", "M" + x1 + "," + y1 + " C" + (x1 + dx) + "," + y1 +
        " " + (x2 - dx) + "," + y2 + " " + x2 + "," + y2);
      var t = 0.4, a = 3 * t * (1 - t) * (1 - t), b = 3 * t * t * (1 - t), c = t * t * t;
      var lx = (1 - t) * (1 - t) * (1 - t) * x1 + a * (x1 + dx) + b * (x2 - dx) + c * x2;
      g.lastChild.setAttribute("y", (1 - c - b) * y1 + (b + c) * y2);
      [g.lastChild].concat([].slice.call(g.lastChild.childNodes)).forEach(function (e) {
        if (e.setAttribute) e.setAttribute("x", lx);
      });
    });
  }

  function setText(id, cls, text) {
    els[id].box.querySelector("text." + cls).textContent = text;
  }
  function reveal() {
    var v = {}, gr = {}, e = {}, u = {}, cur = D.steps[step];
    for (var k = 0; k <= step; k++) {
      var s = D.steps[k];
      (s.v || []).forEach(function (i) { v[i] = 1; });
      (s.g || []).forEach(function (i) { gr[i] = 1; });
      (s.e || []).forEach(function (i) { e[i] = 1; });
      (s.u || []).forEach(function (i) { u[i] = 1; });
    }
    var focus = {};
    (cur.f || []).forEach(function (i) { focus[rep(i)] = 1; });
    function fill(id, n) {
      setText(id, "val", v[n.id] ? "= " + n.value : "= ?");
      setText(id, "grad", gr[n.id] && n.grad ? n.grad : "");
      setText(id, "upd", u[n.id] && n.update ? n.update : "");
      els[id].box.classList.toggle("focus", !!focus[id]);
    }
    D.nodes.forEach(function (n) { fill(n.id, n); });
    D.groups.forEach(function (g) {
      fill(g.id, { id: g.exit, kind: "group", value: nodes[g.exit].value,
                   grad: nodes[g.exit].grad, update: null });
    });
    edgeEls.forEach(function (g, k) {
      g.classList.toggle("shown", !!e[k]);
      g.classList.toggle("focus", (cur.e || []).indexOf(k) >= 0);
      g.lastChild.style.visibility = e[k] ? "visible" : "hidden";
    });
    document.getElementById("fg-status").textContent = cur.t;
    document.getElementById("fg-count").textContent =
      "step " + step + " / " + (D.steps.length - 1);
  }
  function go(k) {
    step = Math.max(0, Math.min(D.steps.length - 1, k));
    reveal();
    if (step === D.steps.length - 1) stop();
  }
  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
    document.getElementById("fg-play").textContent = "▶ play";
  }
  function play() {
    if (timer) return stop();
    if (step === D.steps.length - 1) go(0);
    document.getElementById("fg-play").textContent = "❚❚ pause";
    timer = setInterval(function () { go(step + 1); }, window.fgPlayer.interval);
  }
  function toggle(gid) {
    groups[gid].collapsed = !groups[gid].collapsed;
    layout(); reveal();
  }
  function setAll(collapsed) {
    D.groups.forEach(function (g) { g.collapsed = collapsed; });
    layout(); reveal();
  }

  function hist(parent, st) {
    var bars = st.hist || [], bad = st.nan + st.posinf + st.neginf;
    var all = bars.concat(bad ? [bad] : []), top = Math.max.apply(null, all.concat([1]));
    var h = el("svg", { "class": "hist", width: 14 * all.length, height: 44 }, parent);
    all.forEach(function (c, k) {
      var r = el("rect", { x: 14 * k, y: 40 - 38 * c / top, width: 12,
                           height: Math.max(1, 38 * c / top) }, h);
      if (k >= bars.length) r.setAttribute("class", "bad");
      el("title", {}, r, k >= bars.length ? bad + " non-finite" : String(c));
    });
  }
  function describe(dl, label, text, st) {
    add(dl, label, text === null || text === undefined ? "-" : text);
    if (!st) return;
    var bad = st.nan + st.posinf + st.neginf, dd = document.createElement("dd");
    dd.textContent = st.finite ? "norm " + st.norm + ", mean " + st.mean + ", min " + st.min +
      ", max " + st.max : "no finite element";
    dl.appendChild(dd);
    if (bad) {
      var b = document.createElement("dd");
      b.className = "nonfinite";
      b.textContent = "non-finite: " + st.nan + " nan, " + st.posinf + " +inf, " +
        st.neginf + " -inf";
      dl.appendChild(b);
    }
    var hd = document.createElement("dd");
    if (st.finite) hd.title = "histogram of finite values, " + st.lo + " to " + st.hi;
    hist(hd, st);
    dl.appendChild(hd);
  }
  function add(dl, label, text) {
    var dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = label; dd.textContent = text;
    dl.appendChild(dt); dl.appendChild(dd);
    return dd;
  }
  function show(id) {
    var n = nodes[id] || groups[id], ex = n.members ? nodes[n.exit] : n;
    if (selected) els[selected].box.classList.remove("selected");
    selected = id;
    els[id].box.classList.add("selected");
    panel.textContent = "";
    var close = document.createElement("button");
    close.className = "close"; close.textContent = "×"; close.title = "close";
    close.addEventListener("click", function () { panel.hidden = true; });
    panel.appendChild(close);
    var h = document.createElement("h2");
    h.textContent = n.name;
    panel.appendChild(h);
    var dl = document.createElement("dl");
    panel.appendChild(dl);
    add(dl, "op", n.members ? n.op : n.kind === "op" ? n.op : n.kind);
    add(dl, "formula", n.formula || "-").className = "formula";
    if (n.members) add(dl, "members", n.members.map(function (m) {
      return nodes[m].name; }).join(", "));
    add(dl, "shape and dtype", "(" + ex.shape.join(", ") + ") " + ex.dtype);
    describe(dl, "value", ex.value, ex.vstats);
    describe(dl, "gradient d" + D.loss + "/d" + ex.name, ex.grad, ex.gstats);
    if (ex.local && ex.local.length) add(dl, "local derivatives", ex.local.join(", "));
    if (!n.members && n.update) add(dl, "update (lr " + D.lr + ")", n.update);
    if (ex.layer || ex.scope) add(dl, "layer / scope", (ex.layer || "-") + " / " +
      (ex.scope || "-"));
    if (ex.tap) add(dl, "gradient tap", Object.keys(ex.tap).map(function (k) {
      return k + " = " + ex.tap[k]; }).join(", ")).className = "tap";
    panel.hidden = false;
  }

  function on(id, f) { document.getElementById(id).addEventListener("click", f); }
  on("fg-first", function () { stop(); go(0); });
  on("fg-prev", function () { stop(); go(step - 1); });
  on("fg-next", function () { stop(); go(step + 1); });
  on("fg-last", function () { stop(); go(D.steps.length - 1); });
  on("fg-play", play);
  on("fg-expand", function () { setAll(false); });
  on("fg-collapse", function () { setAll(true); });
  if (!D.groups.length) document.getElementById("fg-groupctl").hidden = true;
  document.addEventListener("keydown", function (ev) {
    if (ev.target && ev.target.tagName === "INPUT") return;
    var keys = { ArrowRight: function () { stop(); go(step + 1); },
      ArrowLeft: function () { stop(); go(step - 1); }, Home: function () { stop(); go(0); },
      End: function () { stop(); go(D.steps.length - 1); }, " ": play };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
  layout();
  go(0);
  window.fgPlayer = { go: go, step: function () { return step; }, steps: D.steps.length,
                      toggle: toggle, interval: 900,
                      setupMs: performance.now() - t0 };
})();
