/* shepherd console: draws the rollout plot from its embedded JSON, opens a decision's evidence, copies SQL.
   No network access: Plotly is served by shepherd (or inlined in a report), the data is in the page. */
(function () {
  "use strict";

  function openDecision(id) {
    var panel = document.getElementById("decision-panel");
    if (!panel) { return; }
    var target = document.getElementById("decision-" + id);
    if (!target) { return; }
    panel.querySelectorAll("article.decision").forEach(function (a) { a.hidden = a !== target; });
    var hint = document.getElementById("decision-hint");
    if (hint) { hint.hidden = true; }
    panel.classList.add("open");
    document.querySelectorAll("button.evidence").forEach(function (b) {
      b.setAttribute("aria-expanded", String(b.getAttribute("data-decision") === String(id)));
    });
    target.focus({ preventScroll: true });
    target.scrollIntoView({ block: "nearest" });
  }

  function drawPlot() {
    var holder = document.getElementById("plot");
    var source = document.getElementById("figure");
    if (!holder || !source || typeof Plotly === "undefined") { return; }
    var fig = JSON.parse(source.textContent);
    Plotly.newPlot(holder, fig.data, fig.layout, {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
      toImageButtonOptions: { format: "png", filename: "shepherd-rollout" }
    }).then(function () { holder.setAttribute("data-ready", "true"); });
    holder.on("plotly_click", function (event) {
      var point = (event.points || []).find(function (p) { return p.data.yaxis === "y5" && p.customdata != null; });
      if (point) { openDecision(point.customdata); }
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button") : null;
    if (!button) { return; }
    if (button.hasAttribute("data-decision")) {
      openDecision(button.getAttribute("data-decision"));
    } else if (button.hasAttribute("data-copy")) {
      var text = document.getElementById(button.getAttribute("data-copy")).textContent;
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done);
      } else {
        var range = document.createRange();
        range.selectNodeContents(document.getElementById(button.getAttribute("data-copy")));
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
      }
    }
  });

  drawPlot();
  window.shepherdConsole = { openDecision: openDecision };
})();
