// Shared page behaviour: image drop zones (with paste and example pictures) and their preview, the tile-cost
// label, busy forms, Ctrl/Cmd+Enter to send, copy buttons, errors that go away once their field is changed,
// and moving to what a form post produced (its error, or the grounding result).
(function () {
  "use strict";

  function strings() {
    var el = document.getElementById("i18n");
    return el ? JSON.parse(el.textContent) : {};
  }

  function setupDropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    var preview = zone.querySelector("img.preview");
    var url = null;
    var error = zone.querySelector(".field-error");
    var maxBytes = Number(zone.getAttribute("data-max-bytes")) || Infinity;
    // A file over the server's limit is refused here, next to the field: sent, it would only be cut off
    // mid-upload ("connection lost") or answered by a bare error page.
    function show() {
      if (url) { URL.revokeObjectURL(url); url = null; }
      zone.querySelectorAll("[data-kept]").forEach(function (el) { el.hidden = true; });
      var file = input.files && input.files[0];
      var refused = Boolean(file && file.size > maxBytes);
      if (refused) {
        input.value = "";
        file = null;
      }
      if (!file) {
        preview.hidden = true;
        preview.removeAttribute("src");
      } else {
        url = URL.createObjectURL(file);
        preview.src = url;
        preview.hidden = false;
      }
      zone.dispatchEvent(new CustomEvent("imagechange"));  // prepare.js sends it ahead
      if (refused && error) {  // after prepare.js has reset the field's state
        error.textContent = strings().too_large || "";
        error.hidden = false;
      }
    }
    function use(file) {  // a file that did not come through the file dialog
      var list = new DataTransfer();
      list.items.add(file);
      input.files = list.files;
      show();
    }
    input.addEventListener("change", show);
    zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show();
      }
    });
    // An image pasted anywhere on the page (a screenshot, a copied picture) is the chosen image.
    document.addEventListener("paste", function (e) {
      var files = Array.prototype.slice.call((e.clipboardData && e.clipboardData.files) || []);
      var image = files.filter(function (f) { return f.type.indexOf("image/") === 0; })[0];
      if (image) { e.preventDefault(); use(image); }
    });
    // Example pictures: fetched and used as if the file had been chosen (a fixed date, so that each one
    // is read ahead once for the chat and grounding pages of a tab, see prepare.js).
    zone.querySelectorAll("button[data-example]").forEach(function (button) {
      button.addEventListener("click", function () {
        var src = button.getAttribute("data-example");
        fetch(src, {credentials: "same-origin"}).then(function (r) {
          if (!r.ok) { throw new Error(String(r.status)); }
          return r.blob();
        }).then(function (blob) {
          use(new File([blob], src.split("/").pop(), {type: blob.type || "image/jpeg", lastModified: 0}));
        }).catch(function () {
          error.textContent = strings().network || "";
          error.hidden = false;
        });
      });
    });
    zone.resetPreview = function () { input.value = ""; show(); };
  }

  function setupTiles(range) {
    var labels = strings().tiles || [];
    var out = document.getElementById("tiles-cost");
    function update() { out.textContent = labels[Number(range.value) - 1] || range.value; }
    range.addEventListener("input", update);
    update();
  }

  function setupBusy(form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = strings().working || button.textContent; }
    });
  }

  // Ctrl+Enter (Cmd+Enter on a Mac) in a form's text sends it with its main button.
  function setupSendKeys(form) {
    form.addEventListener("keydown", function (e) {
      if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey) || !e.target.matches("textarea, input")) { return; }
      e.preventDefault();
      var main = form.querySelector("button[type=submit].primary") || form.querySelector("button[type=submit]");
      if (main && !main.disabled) { form.requestSubmit(main); }
    });
  }

  // A field's error is out of date once the field changes.
  function setupErrorClearing(field) {
    var error = field.querySelector(".field-error");
    function clear() { error.hidden = true; }
    field.addEventListener("input", clear);
    field.addEventListener("change", function (e) { if (e.target.type !== "file") { clear(); } });
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) { return navigator.clipboard.writeText(text); }
    var area = document.createElement("textarea");  // plain http on another host: no Clipboard API
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var done = document.execCommand("copy");
    area.remove();
    return done ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  // <button data-copy="selector">: copies the text of that element, looked up in the nearest
  // [data-copy-scope] first (an answer's own text), then in the page.
  function copyClicked(e) {
    var button = e.target.closest("button[data-copy]");
    if (!button) { return; }
    var selector = button.getAttribute("data-copy");
    var scope = button.closest("[data-copy-scope]");
    var source = (scope && scope.querySelector(selector)) || document.querySelector(selector);
    if (!source) { return; }
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    copyText(source.textContent).then(function () {
      button.textContent = button.getAttribute("data-copied") || label;
      setTimeout(function () { button.textContent = label; }, 2000);
    }, function () { /* nothing copied: the label stays */ });
  }

  // After a form post: the first error shown by the server, with its field focused, or the result.
  function showOutcome() {
    var error = Array.prototype.filter.call(document.querySelectorAll("main .field-error"),
                                            function (p) { return !p.hidden; })[0];
    if (error) {
      var field = error.closest(".field");
      var control = field && field.querySelector("textarea, input:not([type=hidden])");
      error.scrollIntoView({block: "center"});
      if (control) { control.focus({preventScroll: true}); }
      return;
    }
    var result = location.hash === "#result" && document.getElementById("result");
    if (result) { result.focus(); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(setupDropzone);
    document.querySelectorAll("input[data-tiles]").forEach(setupTiles);
    document.querySelectorAll("form[data-busy]").forEach(setupBusy);
    document.querySelectorAll("main form").forEach(setupSendKeys);
    document.querySelectorAll("main .field").forEach(function (field) {
      if (field.querySelector(".field-error")) { setupErrorClearing(field); }
    });
    document.addEventListener("click", copyClicked);
    showOutcome();
  });
})();
