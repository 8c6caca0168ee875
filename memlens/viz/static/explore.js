// memlens explorer: draws one example's panels from the compact JSON that
// memlens/viz/example_data.py writes. Used by the page (`memlens explore`) and by the notebook
// view (`memlens.explain`), so both show the same panels. Needs window.Plotly and
// window.CircuitsVis (inlined once by the page or once per notebook kernel).
(function () {
  "use strict";
  if (window.MemlensExplore) { return; }
  var E = {};
  var uid = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  // Run fn once the bundles are on window; module scripts may run after this one.
  E.whenReady = function (names, fn, where) {
    var tries = 0;
    (function poll() {
      if (names.every(function (n) { return window[n]; })) { fn(); return; }
      if (++tries < 200) { setTimeout(poll, 25); return; }
      if (where) {
        where.appendChild(el("p", { "class": "warn", text: "The views' JavaScript (" + names.join(", ") +
          ") is not loaded in this page: its first output was cleared or the page was reloaded. " +
          "Run memlens.viz.notebook.reset() and rerun this cell." }));
      }
    })();
  };

  function toks(meta, ids) { return ids.map(function (i) { return meta.vocab[i]; }); }
  function fmt(v, digits) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(digits); }

  E.status = function (ex) {
    var same = ex.p.join(" ") === ex.l.join(" ");
    if (ex.g === "noisy") { return same ? "memorized" : "not memorized"; }
    return same ? "correct" : "wrong";
  };

  E.promptText = function (meta, ex) {
    var first = meta.answer_pos[0] + 1;
    return toks(meta, ex.t.slice(1, first)).join(" ");
  };

  function defaultSlot(ex) {
    for (var s = 0; s < ex.l.length; s++) { if (ex.l[s] !== ex.y[s]) { return s; } }
    for (s = 0; s < ex.l.length; s++) { if (ex.p[s] !== ex.l[s]) { return s; } }
    return 0;
  }

  function table(head, rows, cls) {
    var t = el("table", cls ? { "class": cls } : {});
    t.appendChild(el("tr", {}, head.map(function (h) { return el("th", { text: h }); })));
    rows.forEach(function (r) {
      var tr = el("tr", r.attrs || {});
      r.cells.forEach(function (c) {
        tr.appendChild(typeof c === "object" ? el("td", c) : el("td", { text: String(c) }));
      });
      t.appendChild(tr);
    });
    return t;
  }

  function plot(div, traces, layout) {
    var base = {
      height: 340, margin: { t: 40, l: 55, r: 20, b: 60 }, legend: { orientation: "h", y: -0.25 }
    };
    Object.keys(layout).forEach(function (k) { base[k] = layout[k]; });
    if (base.title) { base.title.x = 0; base.title.xanchor = "left"; base.title.font = { size: 14 }; }
    window.Plotly.newPlot(div, traces, base, { displaylogo: false, responsive: true });
  }

  // Attention: base64 bytes, the lower triangle of each (layer, head) pattern, row by row.
  E.decodeAttention = function (b64, layers, heads, n) {
    var raw = atob(b64), k = 0, out = [];
    for (var l = 0; l < layers; l++) {
      var hs = [];
      for (var h = 0; h < heads; h++) {
        var rows = [];
        for (var q = 0; q < n; q++) {
          var row = [];
          for (var s = 0; s < n; s++) { row.push(s <= q ? raw.charCodeAt(k++) / 255 : 0); }
          rows.push(row);
        }
        hs.push(rows);
      }
      out.push(hs);
    }
    return out;
  };

  function header(meta, ex) {
    var status = E.status(ex);
    var good = status === "memorized" || status === "correct";
    var h = el("h2", {}, [el("span", { "class": "ex-id", text: ex.id })]);
    h.appendChild(el("span", {
      "class": "badge" + (ex.n ? " noisy" : ""), text: ex.n ? "noisy label" : "clean label"
    }));
    h.appendChild(el("span", { "class": "badge ex-status " + (good ? "good" : "bad"), text: status }));
    return h;
  }

  function tokensPanel(meta, ex) {
    var box = el("div", {});
    var answer = meta.answer_pos.map(function (p) { return p + 1; });
    var strs = toks(meta, ex.t);
    box.appendChild(table(strs.map(function (_, i) { return String(i); }), [{
      attrs: { "class": "tok" },
      cells: strs.map(function (s, i) { return { text: s, "class": answer.indexOf(i) >= 0 ? "ans" : "" }; })
    }]));
    var rows = [["label", ex.l], ["true label", ex.y], ["prediction", ex.p]].map(function (r) {
      return {
        attrs: { "class": "tok", "data-row": r[0] },
        cells: [{ text: r[0] }].concat(r[1].map(function (id, s) {
          var off = r[0] === "label" ? id !== ex.y[s] : r[0] === "prediction" && id !== ex.l[s];
          return { text: meta.vocab[id], "class": off ? "diff" : "" };
        }))
      };
    });
    box.appendChild(table(["answer slot (column)"].concat(meta.slots), rows, "answer"));
    box.appendChild(el("p", { "class": "note", text: "Prediction: the model's own greedy answer. " +
      "Every panel below runs the example as trained, its label teacher-forced in the answer slots; " +
      "red: differs from the true label (label) or from the label (prediction)." }));
    return box;
  }

  function targetName(t) { return t === "true" ? "true label" : t === "noisy" ? "noisy label" : t; }

  function lensPanel(meta, ex, slot) {
    var box = el("div", {}), div = el("div", { "class": "plot lens-plot" });
    box.appendChild(div);
    var traces = [], rows = [];
    meta.targets.forEach(function (t, k) {
      var y = ex.lens.map(function (point) { var v = point[slot][k]; return v === null ? null : v / 1000; });
      if (y.every(function (v) { return v === null; })) { return; }
      traces.push({ x: meta.points, y: y, mode: "lines+markers", name: targetName(t), type: "scatter" });
    });
    meta.points.forEach(function (p, i) {
      var values = traces.map(function (tr) { return fmt(tr.y[i], 3); });
      rows.push({ attrs: { "data-point": p }, cells: [p].concat(values) });
    });
    box.appendChild(el("details", {}, [el("summary", { text: "values" }),
      table(["point"].concat(traces.map(function (tr) { return tr.name; })), rows, "lens-values")]));
    box._draw = function () {
      plot(div, traces, {
        title: { text: "Logit lens, slot " + slot + " (column " + meta.slots[slot] +
          "): probability by residual point" },
        yaxis: { title: { text: "probability" }, range: [0, 1] },
        xaxis: { title: { text: "residual stream point" } }
      });
    };
    return box;
  }

  function attentionPanel(meta, ex) {
    var box = el("div", { "class": "attn" }), n = ex.t.length;
    var pattern = E.decodeAttention(ex.attn, meta.n_layers, meta.n_heads, n);
    // circuitsvis writes token strings as HTML: escape them so that <bos> shows.
    var strs = toks(meta, ex.t).map(function (s) {
      return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    });
    var views = [];
    for (var l = 0; l < meta.n_layers; l++) {
      var id = "mx-attn-" + (++uid);
      var labels = [];
      for (var h = 0; h < meta.n_heads; h++) { labels.push("L" + l + "H" + h); }
      box.appendChild(el("div", { "class": "attention-view" },
        [el("h4", { text: "layer " + l }), el("div", { id: id })]));
      views.push([id, { tokens: strs, attention: pattern[l], headLabels: labels }]);
    }
    box._draw = function () {
      views.forEach(function (v) {
        window.CircuitsVis.render(v[0], window.CircuitsVis.AttentionPatterns, v[1]);
      });
    };
    return box;
  }

  function attributionPanel(meta, ex, slot) {
    var box = el("div", {}), heads = el("div", { "class": "plot dla-heads" });
    var neurons = el("div", { "class": "plot dla-neurons" });
    var same = ex.l[slot] === ex.y[slot];
    var names = [], label = [], truth = [];
    for (var l = 0; l < meta.n_layers; l++) {
      for (var h = 0; h < meta.n_heads; h++) {
        names.push("L" + l + "H" + h);
        label.push(ex.heads[slot][0][l * meta.n_heads + h]);
        truth.push(ex.heads[slot][1][l * meta.n_heads + h]);
      }
    }
    for (l = 0; l < meta.n_layers; l++) {
      names.push("MLP" + l); label.push(ex.mlp[slot][0][l]); truth.push(ex.mlp[slot][1][l]);
    }
    names.push("embed+biases"); label.push(ex.rest[slot][0]); truth.push(ex.rest[slot][1]);
    var lname = "to the label " + meta.vocab[ex.l[slot]] + (same ? " (= true label)" : "");
    var tname = "to the true label " + meta.vocab[ex.y[slot]];
    var traces = [{ type: "bar", x: names, y: label, name: lname }];
    if (!same) { traces.push({ type: "bar", x: names, y: truth, name: tname }); }
    var top = ex.neurons[slot];
    var nx = top.map(function (r) { return "L" + r[0] + "N" + r[1]; });
    var ntraces = [{ type: "bar", x: nx, y: top.map(function (r) { return r[2]; }), name: lname }];
    if (!same) {
      ntraces.push({ type: "bar", x: nx, y: top.map(function (r) { return r[3]; }), name: tname });
    }
    box.appendChild(heads);
    box.appendChild(neurons);
    box.appendChild(el("details", {}, [el("summary", { text: "values" }),
      table(["component", lname].concat(same ? [] : [tname]), names.map(function (n, i) {
        var cells = [n, fmt(label[i], 2)].concat(same ? [] : [fmt(truth[i], 2)]);
        return { attrs: { "data-component": n }, cells: cells };
      }).concat(top.map(function (r, i) {
        var cells = [nx[i], fmt(r[2], 2)].concat(same ? [] : [fmt(r[3], 2)]);
        return { attrs: { "data-component": nx[i] }, cells: cells };
      })), "dla-values")]));
    box._draw = function () {
      plot(heads, traces, { barmode: "group",
        title: { text: "Direct logit attribution at slot " + slot + ": heads, MLP layers, the rest" },
        yaxis: { title: { text: "logit" } } });
      plot(neurons, ntraces, { barmode: "group", title: { text: "Top MLP neurons at slot " + slot +
        (same ? " (by |attribution to the label|)" : " (by |to the label - to the true label|)") },
        yaxis: { title: { text: "logit" } } });
    };
    return box;
  }

  function patchPanel(meta, ex) {
    var box = el("div", {}), div = el("div", { "class": "plot patch-plot" });
    box.appendChild(el("p", { "class": "note", text: "Each intermediate's residual stream (resid_pre) is " +
      "patched at one site from a counterfactual prompt that changes it, and from one that edits the same " +
      "tokens but preserves it; the label stays teacher-forced. Recall: the label is still the argmax at " +
      "every slot. Sites: " + meta.site_note + "." }));
    var rows = [], names = [], dc = [], dp = [];
    meta.patching.forEach(function (item, k) {
      var r = ex.patch[k];
      var site = "L" + item.layer + " pos " + item.position;
      if (!r) {
        // 0: the task draws no counterfactuals for this kind of example; null: none was found.
        var why = r === 0
          ? "not patched: the task draws counterfactuals only for the kind of example that can carry noise"
          : "no counterfactual: the recipes found no matched changing and preserving edit of this example";
        rows.push({ attrs: { "data-intermediate": item.label },
          cells: [item.label, site, { text: why, colspan: "6" }] });
        return;
      }
      // The counterfactual prompt, its edited tokens in brackets.
      var edit = function (ids) {
        var t = ex.t.slice(1, meta.answer_pos[0] + 1).map(function (id) { return meta.vocab[id]; });
        item.edited.forEach(function (p, i) { t[p - 1] = "[" + meta.vocab[ids[i]] + "]"; });
        return t.join(" ");
      };
      rows.push({ attrs: { "data-intermediate": item.label }, cells: [item.label, site, edit(r[6]),
        edit(r[7]), r[0] + " \u2192 " + r[2] + " / " + r[4], fmt(r[1], 2), fmt(r[3] - r[1], 2),
        fmt(r[5] - r[1], 2)] });
      names.push(item.label); dc.push(r[3] - r[1]); dp.push(r[5] - r[1]);
    });
    box.appendChild(table(["intermediate", "site", "changing edit", "preserving edit",
      "recall: base \u2192 change / preserve", "log p(label)", "\u0394 change", "\u0394 preserve"], rows,
      "patch-values"));
    box.appendChild(div);
    box._draw = function () {
      if (!names.length) {
        div.textContent = "No intermediate has a counterfactual for this example.";
        return;
      }
      plot(div, [{ type: "bar", x: names, y: dc, name: "changing counterfactual" },
                 { type: "bar", x: names, y: dp, name: "preserving counterfactual" }],
        { barmode: "group", title: { text: "Change in log p(label) when each intermediate is patched" },
          yaxis: { title: { text: "\u0394 log p(label)" } } });
    };
    return box;
  }

  // Draw one example into root (its previous content is replaced).
  E.renderExample = function (root, meta, ex) {
    root.innerHTML = "";
    root.classList.add("mx");
    root.setAttribute("data-example", ex.id);
    root.appendChild(header(meta, ex));
    root.appendChild(el("p", { "class": "note", text: meta.run + " (" + meta.task + "), " +
      (ex.g === "noisy" ? "noisy" : ex.g === "clean" ? "clean training" : "test") + " example " + ex.i }));
    root.appendChild(tokensPanel(meta, ex));
    var slotBox = el("div", { "class": "slots" }, [el("span", { text: "answer slot: " })]);
    var slotPanels = el("div", {});
    var current = defaultSlot(ex);
    function drawSlot(s) {
      current = s;
      Array.prototype.forEach.call(slotBox.querySelectorAll("button"), function (b, i) {
        b.className = i === s ? "on" : "";
      });
      slotPanels.innerHTML = "";
      var lens = lensPanel(meta, ex, s), dla = attributionPanel(meta, ex, s);
      slotPanels.appendChild(el("h3", { text: "Logit lens" }));
      slotPanels.appendChild(el("p", { "class": "note", text: "Each residual-stream point decoded with the " +
        "final LayerNorm and unembedding: where the true answer forms and where the noisy label takes " +
        "over." }));
      slotPanels.appendChild(lens);
      slotPanels.appendChild(el("h3", { text: "Direct logit attribution" }));
      slotPanels.appendChild(el("p", { "class": "note", text: "What each head, each MLP layer and its top " +
        "neurons write directly into the logit of the label and of the true label (through the final " +
        "LayerNorm's scale)." }));
      slotPanels.appendChild(dla);
      lens._draw(); dla._draw();
    }
    meta.slots.forEach(function (c, s) {
      var b = el("button", { type: "button", text: s + " (col " + c + ")" });
      b.addEventListener("click", function () { drawSlot(s); });
      slotBox.appendChild(b);
    });
    root.appendChild(slotBox);
    root.appendChild(slotPanels);
    root.appendChild(el("h3", { text: "Attention patterns" }));
    var attn = attentionPanel(meta, ex);
    root.appendChild(attn);
    root.appendChild(el("h3", { text: "Patching intermediates" }));
    var patch = patchPanel(meta, ex);
    root.appendChild(patch);
    drawSlot(current);
    attn._draw(); patch._draw();
  };

  // The notebook view: one example, its data in a JSON script beside the root div.
  E.renderInto = function (id) {
    var root = document.getElementById(id);
    var data = JSON.parse(document.getElementById(id + "-data").textContent);
    E.whenReady(["Plotly", "CircuitsVis"], function () {
      E.renderExample(root, data.meta, data.examples[0]);
    }, root);
  };

  var FILTERS = {
    "all": function () { return true; },
    "clean": function (ex) { return ex.g === "clean"; },
    "noisy": function (ex) { return ex.g === "noisy"; },
    "noisy memorized": function (ex) { return ex.g === "noisy" && E.status(ex) === "memorized"; },
    "noisy not memorized": function (ex) { return ex.g === "noisy" && E.status(ex) === "not memorized"; },
    "test": function (ex) { return ex.g === "test"; },
    "test wrong": function (ex) { return ex.g === "test" && E.status(ex) === "wrong"; }
  };

  // The page: a searchable, filterable list; #example=noisy-17 selects an example.
  E.startPage = function (root, data) {
    var meta = data.meta, byId = {};
    data.examples.forEach(function (ex) {
      ex._text = E.promptText(meta, ex) + " " + toks(meta, ex.l).join(" ");
      byId[ex.id] = ex;
    });
    var search = el("input", { type: "search", placeholder: "index (17, noisy-17) or tokens (3 4 +)" });
    var filter = el("select", {}, Object.keys(FILTERS).map(function (k) {
      return el("option", { value: k, text: k });
    }));
    var count = el("div", { "class": "note" }), list = el("div", { "class": "mx-list" });
    var main = el("div", { "class": "mx-main" });
    var sizes = Object.keys(meta.sizes).map(function (g) {
      var shown = data.examples.filter(function (ex) { return ex.g === g; }).length;
      return g + " " + shown + " of " + meta.sizes[g];
    }).join(", ");
    var side = el("div", { "class": "mx-side" }, [el("h2", { text: "memlens explore" }),
      el("p", { "class": "note", text: meta.run + " (" + meta.task + "). Examples on this page: " + sizes +
        ". Others: `memlens explore RUN --examples noisy-17` or " +
        "memlens.explain(run, \"train_noisy\", 17)." }),
      search, filter, count, list]);
    root.classList.add("mx", "mx-page");
    root.appendChild(side);
    root.appendChild(main);

    function matches(ex, q) {
      if (!q) { return true; }
      if (/^\d+$/.test(q)) { return String(ex.i) === q; }
      if (/^[a-z]+-\d+$/.test(q)) { return ex.id === q; }
      return ex._text.indexOf(q) >= 0;
    }
    function fill() {
      var q = search.value.trim(), keep = FILTERS[filter.value];
      list.innerHTML = "";
      var shown = data.examples.filter(function (ex) { return keep(ex) && matches(ex, q); });
      shown.forEach(function (ex) {
        var a = el("a", { href: "#example=" + ex.id, "data-id": ex.id,
          text: ex.id + "  " + ex._text + "  (" + E.status(ex) + ")" });
        if (ex.id === selected) { a.className = "on"; }
        list.appendChild(a);
      });
      count.textContent = shown.length + " of " + data.examples.length + " examples";
    }
    var selected = null;
    function select() {
      var m = /example=([a-z]+-\d+)/.exec(window.location.hash);
      var first = data.examples.filter(FILTERS["noisy memorized"])[0] || data.examples[0];
      var id = m ? m[1] : first && first.id;
      if (!byId[id]) {
        main.innerHTML = "";
        main.appendChild(el("p", { "class": "warn", text: id + " is not on this page (it holds the first " +
          "examples of each group and any given with --examples): run `memlens explore RUN --examples " +
          id + "`." }));
        return;
      }
      selected = id;
      Array.prototype.forEach.call(list.querySelectorAll("a"), function (a) {
        a.className = a.getAttribute("data-id") === id ? "on" : "";
      });
      E.whenReady(["Plotly", "CircuitsVis"], function () { E.renderExample(main, meta, byId[id]); }, main);
    }
    search.addEventListener("input", fill);
    filter.addEventListener("change", fill);
    window.addEventListener("hashchange", select);
    fill();
    select();
  };

  window.MemlensExplore = E;
})();
