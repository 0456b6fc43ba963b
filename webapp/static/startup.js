// The start notice: polls /health while the model is fetched, exported or loaded, and shows the phase
// and its progress; removes itself when the model is ready. The phase names come translated in #i18n.
(function () {
  "use strict";
  var POLL_MS = 2000;

  function strings() {
    var el = document.getElementById("i18n");
    return el ? JSON.parse(el.textContent) : {};
  }

  function amount(body, t) {
    if (body.done === undefined) { return ""; }
    if (body.unit === "bytes") {
      var mb = function (n) { return Math.round(n / 1048576); };
      return (body.total ? t.startup_mb_of : t.startup_mb)
        .replace("%(done)s", mb(body.done)).replace("%(total)s", mb(body.total || 0));
    }
    return body.total ? t.startup_step_of.replace("%(done)s", body.done + 1).replace("%(total)s", body.total) : "";
  }

  function show(notice, body, t) {
    var phases = t.startup_phases || {};
    var failed = body.status === "error";
    var phase = failed ? "failed" : body.phase;
    document.getElementById("startup-phase").textContent = phases[phase] || phase || "";
    var detail = failed ? body.error : [amount(body, t), body.progress].filter(Boolean).join(" · ");
    document.getElementById("startup-detail").textContent = detail || "";
    var bar = document.getElementById("startup-bar");
    bar.hidden = failed;
    if (body.done !== undefined && body.total) {
      bar.max = body.total;
      bar.value = body.done;
    } else {
      bar.removeAttribute("value");  // indeterminate
    }
    document.getElementById("startup-hint").firstChild.textContent =
      (failed ? t.startup_failed_hint : t.startup_hint) + " ";
  }

  function poll(notice) {
    var t = strings();
    fetch(notice.getAttribute("data-health-url"), {headers: {"Accept": "application/json"}, cache: "no-store"})
      .then(function (r) { return r.json(); })
      .then(function (body) {
        if (body.status === "ok") {
          notice.classList.add("ready");
          document.getElementById("startup-phase").textContent = t.startup_ready || "";
          document.getElementById("startup-detail").textContent = "";
          document.getElementById("startup-bar").hidden = true;
          document.getElementById("startup-hint").hidden = true;
          setTimeout(function () { notice.remove(); }, 4000);
          return;
        }
        show(notice, body, t);
        setTimeout(function () { poll(notice); }, POLL_MS);
      })
      .catch(function () { setTimeout(function () { poll(notice); }, POLL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var notice = document.getElementById("startup");
    if (notice) { poll(notice); }
  });
})();
