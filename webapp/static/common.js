// Shared page behaviour: image drop zones with a preview, the tile-cost label, busy forms.
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

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(setupDropzone);
    document.querySelectorAll("input[data-tiles]").forEach(setupTiles);
    document.querySelectorAll("form[data-busy]").forEach(setupBusy);
  });
})();
