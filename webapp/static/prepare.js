// Send the chosen image to the server as soon as it is chosen, so that the model reads it while the question
// is typed, and show how far it got next to the preview. The form then sends image_id instead of the file
// (the server waits for the reading when it is not finished). Each file's image_id is kept in sessionStorage
// (by name, size and date), so the chat and grounding pages of a tab share the reading of the same file.
(function () {
  "use strict";
  var POLL_MS = 300;

  function storageKey(file) {
    return "prepared:" + file.name + ":" + file.size + ":" + file.lastModified;
  }

  function remembered(file) {
    try { return JSON.parse(sessionStorage.getItem(storageKey(file)) || "null"); } catch (e) { return null; }
  }

  function remember(file, status) {
    try {
      sessionStorage.setItem(storageKey(file), JSON.stringify({image_id: status.image_id,
                                                               status_url: status.status_url}));
    } catch (e) { /* storage off: each page reads its own copy */ }
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // The preparation's status, or null when it no longer exists (expired, or replaced by another image).
  async function getStatus(url) {
    var response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
    if (response.status === 404) { return null; }
    if (!response.ok) { throw new Error(String(response.status)); }
    return response.json();
  }

  function setupPreparation(zone) {
    var form = zone.closest("form");
    var input = zone.querySelector("input[type=file]");
    var hidden = zone.querySelector("input[name=image_id]");
    var label = zone.querySelector(".prep-status");
    var error = zone.querySelector(".field-error");
    var tiles = form.querySelector("input[data-tiles]");
    var csrf = document.querySelector("meta[name=csrf-token]").content;
    var i18n = JSON.parse(document.getElementById("i18n").textContent);
    var round = 0;  // bumped when the image or its tile budget changes: answers for older rounds are ignored
    var pending = Promise.resolve();

    function say(text, state) {
      label.textContent = text || "";
      label.hidden = !text;
      label.setAttribute("data-state", state || "");
    }

    function show(status) {
      if (status.status === "ready") {
        say(i18n.prep_ready, "ready");
      } else if (status.status === "failed") {
        say(i18n.prep_failed, "failed");
      } else {
        say(i18n.prep_reading.replace("%(done)d", status.tiles_done).replace("%(total)d", status.tiles),
            status.status);
      }
    }

    async function poll(mine, url) {
      while (mine === round) {
        var status;
        try { status = await getStatus(url); } catch (e) { status = undefined; }  // a network blip: retry
        if (mine !== round) { return; }
        if (status === null) { hidden.value = ""; say(""); return; }  // gone: the form sends the file
        if (status) {
          show(status);
          if (status.status !== "queued" && status.status !== "encoding") { return; }
        }
        await sleep(POLL_MS);
      }
    }

    async function start(body) {
      say(i18n.prep_sending, "sending");
      if (tiles) { body.set("max_tiles", tiles.value); }
      var response = await fetch(zone.getAttribute("data-prepare"), {
        method: "POST", body: body, credentials: "same-origin",
        headers: {"Accept": "application/json", "X-CSRF-Token": csrf}
      });
      var status = await response.json().catch(function () { return {}; });
      if (!response.ok) { throw status.error || {}; }
      return status;
    }

    // A new preparation at the current tile budget: from the known one's image_id (no upload), else (or
    // when that has just expired) by sending the file.
    async function startFor(file, known) {
      if (known) {
        var again = new FormData();
        again.set("image_id", known.image_id);
        try { return await start(again); } catch (err) { if (err.code !== "not_found" || !file) { throw err; } }
      }
      var upload = new FormData();
      upload.set("image", file);
      return start(upload);
    }

    async function prepare(mine, file) {
      var known = remembered(file);
      var status = known ? await getStatus(known.status_url).catch(function () { return null; }) : null;
      if (mine !== round) { return; }
      if (!status || (tiles && status.max_tiles !== Number(tiles.value))) {
        status = await startFor(file, status);
        remember(file, status);
        if (mine !== round) { return; }
      }
      hidden.value = status.image_id;
      show(status);
      poll(mine, status.status_url);  // not awaited: asking need not wait for "ready"
    }

    function changed() {
      round += 1;
      var mine = round;
      hidden.value = "";
      error.hidden = true;
      var file = input.files && input.files[0];
      if (!file) { say(""); pending = Promise.resolve(); return; }
      say(i18n.prep_sending, "sending");
      pending = failsNextToField(mine, prepare(mine, file));
    }

    // The image kept from the last grounding (no file chosen, its image_id in the form): read again from
    // its id at the new tile budget.
    function keptChanged() {
      round += 1;
      var mine = round;
      say(i18n.prep_sending, "sending");
      pending = failsNextToField(mine, startFor(null, {image_id: hidden.value}).then(function (status) {
        if (mine !== round) { return; }
        hidden.value = status.image_id;
        show(status);
        poll(mine, status.status_url);
      }));
    }

    function failsNextToField(mine, work) {
      return work.catch(function (err) {
        if (mine !== round) { return; }
        say("");
        error.textContent = (err && err.message) || i18n.network;
        error.hidden = false;
      });
    }

    zone.addEventListener("imagechange", changed);
    if (tiles) {
      tiles.addEventListener("change", function () {
        if (input.files && input.files.length) { changed(); } else if (hidden.value) { keptChanged(); }
      });
    }
    // The image_id to send instead of the file ("" when there is none), once the upload has been answered.
    zone.preparedId = async function () {
      await pending;
      return hidden.value;
    };

    if (!form.hasAttribute("data-fetch")) { setupPlainSubmit(form, zone, input); }
  }

  // A form sent without fetch() (grounding): wait for the upload, then send image_id and leave the file out.
  function setupPlainSubmit(form, zone, input) {
    var ready = false;
    form.addEventListener("submit", function (event) {
      if (ready) { return; }
      event.preventDefault();
      zone.preparedId().then(function (id) {
        input.disabled = Boolean(id);  // a disabled input is not sent
        ready = true;
        setTimeout(function () { form.requestSubmit(); });  // once this submit event is over
      });
    });
    window.addEventListener("pageshow", function () { input.disabled = false; ready = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone][data-prepare]").forEach(setupPreparation);
  });
})();
