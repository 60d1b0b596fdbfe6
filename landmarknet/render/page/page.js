
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("lnet-data").textContent);
  var rows = DATA.rows;
  var svg = document.getElementById("lnet-svg");
  var graph = document.getElementById("lnet-graph");
  var canvas = document.getElementById("canvas");
  var W = parseFloat(svg.getAttribute("width")), H = parseFloat(svg.getAttribute("height"));
  svg.removeAttribute("viewBox");
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  var nodeEls = {};
  Array.prototype.forEach.call(svg.querySelectorAll("g.node"), function (g) {
    nodeEls[g.getAttribute("data-node")] = g;
  });

  // ---- formatting -----------------------------------------------------------------------
  function trim(t) { return t.indexOf(".") < 0 ? t : t.replace(/0+$/, "").replace(/\.$/, ""); }
  function human(v) {
    var units = [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(v) >= units[i][1]) return trim((v / units[i][1]).toPrecision(3)) + units[i][0];
    }
    return String(v);
  }
  function bytes(v) {
    var units = [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (v >= units[i][1]) return trim((v / units[i][1]).toPrecision(3)) + " " + units[i][0];
    }
    return v + " B";
  }
  function group(v) { return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  // ---- pan and zoom ---------------------------------------------------------------------
  var view = {k: 1, x: 0, y: 0};
  function apply() {
    graph.setAttribute("transform", "translate(" + view.x + "," + view.y + ") scale(" + view.k + ")");
  }
  function fitAll() {
    var cw = canvas.clientWidth, ch = canvas.clientHeight;
    view.k = Math.min(cw / W, ch / H, 1.5);
    view.x = (cw - W * view.k) / 2; view.y = (ch - H * view.k) / 2; apply();
  }
  function fitWidth() {
    var cw = canvas.clientWidth;
    view.k = Math.min(cw / W, 1);
    view.x = (cw - W * view.k) / 2; view.y = 0; apply();
  }
  function zoomAt(mx, my, factor) {
    var k = Math.max(0.02, Math.min(8, view.k * factor));
    view.x = mx - (mx - view.x) * k / view.k;
    view.y = my - (my - view.y) * k / view.k;
    view.k = k; apply();
  }
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = canvas.getBoundingClientRect();
    var d = ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaY;
    zoomAt(ev.clientX - r.left, ev.clientY - r.top, Math.exp(-d * 0.0015));
  }, {passive: false});
  var drag = null;
  canvas.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) return;
    drag = {x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false};
  });
  window.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    if (!drag.moved) { drag.moved = true; canvas.classList.add("drag"); }
    view.x = drag.vx + dx; view.y = drag.vy + dy; apply();
  });
  window.addEventListener("pointerup", function () {
    if (drag && drag.moved) { canvas.dataset.justDragged = "1"; setTimeout(function () { delete canvas.dataset.justDragged; }, 0); }
    drag = null; canvas.classList.remove("drag");
  });
  function centerOn(nodeId) {
    var g = nodeEls[nodeId];
    if (!g) return;
    var b = g.getBBox(), t = g.transform.baseVal.consolidate();
    var ox = t ? t.matrix.e : 0, oy = t ? t.matrix.f : 0;
    var cx = ox + b.x + b.width / 2, cy = oy + b.y + b.height / 2;
    if (view.k < 0.6) view.k = 0.9;
    view.x = canvas.clientWidth / 2 - cx * view.k;
    view.y = canvas.clientHeight / 2 - cy * view.k; apply();
  }
  document.getElementById("fit").addEventListener("click", fitAll);
  document.getElementById("fitw").addEventListener("click", fitWidth);

  // ---- selection and the side panel -----------------------------------------------------
  var selected = null;
  var tableRows = {};
  function kv(tbody, key, value, title) {
    var tr = el("tr"), td = el("td", null, key), tv = el("td", null, value);
    if (title) tv.title = title;
    tr.appendChild(td); tr.appendChild(tv); tbody.appendChild(tr);
  }
  function showPanel(r) {
    document.getElementById("panel-empty").hidden = true;
    document.getElementById("panel-body").hidden = false;
    document.getElementById("p-name").textContent = r.name;
    var pt = document.getElementById("p-type");
    pt.textContent = "";
    var chip = el("span", "pchip pchip-" + r.family); pt.appendChild(chip);
    pt.appendChild(document.createTextNode(r.type + " · " + r.family + (r.inPlace ? " · in place" : "")));
    var kvb = document.querySelector("#p-kv tbody"); kvb.textContent = "";
    r.bottoms.forEach(function (b, i) { kv(kvb, i ? "" : "bottoms", b + "  " + r["in"][i]); });
    r.tops.forEach(function (t, i) { kv(kvb, i ? "" : "tops", t + "  " + r.out[i]); });
    if (r.detail) kv(kvb, "summary", r.detail);
    kv(kvb, "params", group(r.params));
    if (r.stats) kv(kvb, "statistics", group(r.stats));
    kv(kvb, "MACs", r.counted ? group(r.macs) + "  (" + human(r.macs) + ")" : "not counted");
    kv(kvb, "FLOPs", r.counted ? group(r.flops) + "  (" + human(r.flops) + ")" : "not counted");
    kv(kvb, "other ops", r.counted ? group(r.ops) : "not counted");
    kv(kvb, "memory", bytes(r.memory) + (r.inPlace ? " (in place)" : ""));
    if (r.lossWeights && r.lossWeights.some(function (w) { return w; })) kv(kvb, "loss weight", r.lossWeights.join(", "));
    kv(kvb, "prefix", r.prefix);
    var fold = document.getElementById("p-folded"); fold.textContent = "";
    var head = r.node ? rows.filter(function (x) { return x.node === r.node && !x.inPlace; })[0] : null;
    if (r.folded.length) {
      fold.appendChild(el("h3", null, "Folded in-place layers"));
      r.folded.forEach(function (i) {
        var a = el("a", "lnk", rows[i].name + " (" + rows[i].type + ")");
        a.addEventListener("click", function () { select(i, true); });
        fold.appendChild(a); fold.appendChild(el("br"));
      });
    } else if (r.inPlace && head && head.i !== r.i) {
      fold.appendChild(el("h3", null, "Drawn inside"));
      var a = el("a", "lnk", head.name + " (" + head.type + ")");
      a.addEventListener("click", function () { select(head.i, true); });
      fold.appendChild(a);
    }
    var bb = document.querySelector("#p-blobs tbody"); bb.textContent = "";
    if (!r.blobs.length) kv(bb, "", "none");
    r.blobs.forEach(function (b, i) {
      var what = b.learnable ? "learnable" : "statistic";
      if (b.shared_from) what += ", shared from " + b.shared_from;
      kv(bb, i + " " + b.attr, b.shape.join("×") + "  " + what);
    });
    document.getElementById("p-src").textContent = r.source ? "(" + r.source + ")" : "";
    document.getElementById("p-proto").textContent = r.proto;
  }
  function clearHighlight() {
    Array.prototype.forEach.call(svg.querySelectorAll(".sel,.hl"), function (e) {
      e.classList.remove("sel"); e.classList.remove("hl");
    });
    Object.keys(tableRows).forEach(function (k) { tableRows[k].classList.remove("sel"); });
  }
  function select(i, center) {
    var r = rows[i];
    if (!r) return;
    selected = i;
    clearHighlight();
    showPanel(r);
    if (r.node && nodeEls[r.node]) {
      var g = nodeEls[r.node];
      g.classList.add("sel");
      var sub = g.querySelector('.sub[data-row="' + i + '"]');
      if (sub) sub.classList.add("sel");
      Array.prototype.forEach.call(svg.querySelectorAll('[data-src="' + r.node + '"],[data-dst="' + r.node + '"]'), function (p) {
        p.classList.add("hl");
        var a = svg.querySelector('polygon[data-edge="' + p.getAttribute("data-edge") + '"]');
        if (a) a.classList.add("hl");
      });
      if (center) centerOn(r.node);
    }
    var tr = tableRows[i];
    if (tr) {
      tr.classList.add("sel");
      var box = document.getElementById("tables");
      var top = tr.offsetTop - box.clientHeight / 2;
      box.scrollTop = Math.max(0, top);
    }
    history.replaceState(null, "", "#" + encodeURIComponent(r.name));
  }
  svg.addEventListener("click", function (ev) {
    if (canvas.dataset.justDragged) return;
    var t = ev.target.closest ? ev.target.closest("[data-row]") : null;
    if (!t) return;
    select(parseInt(t.getAttribute("data-row"), 10), false);
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") {
      clearHighlight(); selected = null;
      document.getElementById("panel-body").hidden = true;
      document.getElementById("panel-empty").hidden = false;
      search.value = ""; runSearch();
    }
  });

  // ---- the tables -----------------------------------------------------------------------
  var tbody = document.querySelector("#layers tbody");
  rows.forEach(function (r) {
    var tr = el("tr", (r.inPlace ? "folded" : "") + (r.input ? " inp" : ""));
    tr.appendChild(el("td", "num", r.i));
    var nm = el("td", "nm", r.name); nm.title = r.name; tr.appendChild(nm);
    tr.appendChild(el("td", null, r.type));
    var tin = el("td", null, r["in"].join(", ")); tin.title = r.bottoms.join(", "); tr.appendChild(tin);
    var tout = el("td", null, r.out.join(", ")); tout.title = r.tops.join(", "); tr.appendChild(tout);
    var p = el("td", "num", group(r.params)); tr.appendChild(p);
    var m = el("td", "num", r.counted ? human(r.macs) : "?"); m.title = group(r.macs); tr.appendChild(m);
    var o = el("td", "num", r.counted ? human(r.ops) : "?"); o.title = group(r.ops); tr.appendChild(o);
    var me = el("td", "num", bytes(r.memory)); me.title = group(r.memory) + " bytes"; tr.appendChild(me);
    tr.appendChild(el("td", null, r.input ? "" : r.prefix));
    tr.addEventListener("click", function () { select(r.i, true); });
    tableRows[r.i] = tr;
    tbody.appendChild(tr);
  });
  var T = DATA.totals;
  var ft = el("tr");
  [["", ""], ["total", ""], [T.layers + " layers", ""], ["", ""], ["", ""],
   [group(T.params), "num"], [human(T.macs), "num"], [human(T.ops), "num"], [bytes(T.memory), "num"], ["", ""]]
    .forEach(function (c) { ft.appendChild(el("td", c[1], c[0])); });
  ft.children[6].title = group(T.macs) + " MACs, " + group(T.flops) + " FLOPs";
  document.querySelector("#layers tfoot").appendChild(ft);

  function sortable(table, getter) {
    var ths = table.querySelectorAll("th");
    Array.prototype.forEach.call(ths, function (th) {
      th.addEventListener("click", function () {
        var k = th.getAttribute("data-k");
        var asc = !th.classList.contains("asc");
        Array.prototype.forEach.call(ths, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = table.querySelector("tbody");
        var items = Array.prototype.slice.call(body.children);
        items.sort(function (a, b) {
          var x = getter(a, k), y = getter(b, k);
          var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        items.forEach(function (tr) { body.appendChild(tr); });
      });
    });
  }
  var rowOfTr = new Map();
  Object.keys(tableRows).forEach(function (k) { rowOfTr.set(tableRows[k], rows[k]); });
  sortable(document.getElementById("layers"), function (tr, k) {
    var r = rowOfTr.get(tr);
    if (k === "in" || k === "out") return r[k].join(",");
    return r[k];
  });
  var pbody = document.querySelector("#prefixes tbody");
  var prefRows = new Map();
  Object.keys(DATA.prefixes).forEach(function (name) {
    var s = DATA.prefixes[name];
    var tr = el("tr");
    tr.appendChild(el("td", null, name));
    tr.appendChild(el("td", "num", s.layers));
    tr.appendChild(el("td", "num", group(s.params)));
    var m = el("td", "num", human(s.macs)); m.title = group(s.macs); tr.appendChild(m);
    tr.appendChild(el("td", "num", human(s.ops)));
    tr.appendChild(el("td", "num", bytes(s.memory)));
    var share = T.macs ? s.macs / T.macs : 0;
    tr.appendChild(el("td", "num", (100 * share).toFixed(1) + " %"));
    prefRows.set(tr, {prefix: name, layers: s.layers, params: s.params, macs: s.macs, ops: s.ops, memory: s.memory, share: share});
    tr.addEventListener("click", function () { search.value = name; runSearch(true); });
    pbody.appendChild(tr);
  });
  sortable(document.getElementById("prefixes"), function (tr, k) { return prefRows.get(tr)[k]; });

  // ---- search ---------------------------------------------------------------------------
  var search = document.getElementById("search");
  var hits = document.getElementById("hits");
  var matches = [], cursor = -1;
  function runSearch(byPrefix) {
    var q = search.value.trim().toLowerCase();
    matches = []; cursor = -1;
    var matchedNodes = {};
    rows.forEach(function (r) {
      var hit = !q || (byPrefix === true ? r.prefix.toLowerCase() === q :
        (r.name + " " + r.type + " " + r.tops.join(" ") + " " + r.bottoms.join(" ")).toLowerCase().indexOf(q) >= 0);
      tableRows[r.i].style.display = hit ? "" : "none";
      if (hit && q) { matches.push(r.i); if (r.node) matchedNodes[r.node] = true; }
    });
    Object.keys(nodeEls).forEach(function (id) {
      var g = nodeEls[id];
      g.classList.toggle("match", !!q && !!matchedNodes[id]);
      g.classList.toggle("dim", !!q && !matchedNodes[id]);
    });
    Array.prototype.forEach.call(svg.querySelectorAll(".edge,.arrow,.lbl"), function (e) {
      e.classList.toggle("dim", !!q);
    });
    hits.textContent = q ? matches.length + " match" + (matches.length === 1 ? "" : "es") : "";
  }
  search.addEventListener("input", function () { runSearch(false); });
  search.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && matches.length) {
      cursor = (cursor + 1) % matches.length;
      select(matches[cursor], true);
      hits.textContent = (cursor + 1) + " / " + matches.length;
    }
  });

  // ---- downloads (data URLs) -------------------------------------------------------------
  var csv = document.getElementById("dl-csv"), js = document.getElementById("dl-json");
  csv.href = "data:text/csv;charset=utf-8," + encodeURIComponent(DATA.csv);
  csv.setAttribute("download", DATA.stem + ".csv");
  js.href = "data:application/json;charset=utf-8," + encodeURIComponent(DATA.json);
  js.setAttribute("download", DATA.stem + ".json");

  // ---- start ----------------------------------------------------------------------------
  fitWidth();
  window.addEventListener("resize", function () { if (selected === null) fitWidth(); });
  var wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) {
    var r0 = rows.filter(function (r) { return r.name === wanted; })[0];
    if (r0) select(r0.i, true);
  }
  window.lnet = {select: select, rows: rows, view: view, fitAll: fitAll, centerOn: centerOn};
})();
