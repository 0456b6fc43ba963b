// Chat page: send the form with fetch() and show the answer as it streams in (Server-Sent Events).
// An image read ahead (prepare.js) is sent as its image_id. Model text is only ever put into the page
// with textContent.
(function () {
  "use strict";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function addBubble(dialog, role, who, text, thumbUrl) {
    document.getElementById("dialog-empty").hidden = true;
    var bubble = el("div", "bubble " + role);
    bubble.appendChild(el("span", "who", who));
    if (thumbUrl) {
      var img = el("img", "thumb");
      img.src = thumbUrl;
      img.alt = "";
      bubble.appendChild(img);
    }
    var body = el("p", "text", text);
    bubble.appendChild(body);
    var timing = null;
    if (role.indexOf("assistant") === 0) {  // its timing line and a copy button, as the page draws them
      var i18n = strings();
      var meta = el("p", "meta");
      timing = meta.appendChild(el("span", "timing"));
      var copy = meta.appendChild(el("button", "copy", i18n.copy));
      copy.type = "button";
      copy.setAttribute("data-copy", ".text");
      copy.setAttribute("data-copied", i18n.copied);
      bubble.setAttribute("data-copy-scope", "");
      bubble.appendChild(meta);
    }
    dialog.insertBefore(bubble, document.getElementById("dialog-empty"));
    bubble.scrollIntoView({block: "end"});
    return {node: bubble, text: body, timing: timing};
  }

  function removeBubbles(dialog, bubbles) {
    bubbles.forEach(function (b) { b.node.remove(); });
    document.getElementById("dialog-empty").hidden = dialog.querySelector(".bubble") !== null;
  }

  function strings() {
    return JSON.parse(document.getElementById("i18n").textContent);
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; p.hidden = true; });
  }

  // The message next to its field, brought into view with the field focused.
  function showError(form, error) {
    var param = error.param === "image_id" ? "image" : error.param;
    var slot = (param && document.getElementById("error-" + param)) ||
      document.getElementById("error-form");
    slot.textContent = error.message || String(error);
    slot.hidden = false;
    var field = slot.closest(".field");
    var control = field && field.querySelector("textarea, input:not([type=hidden])");
    slot.scrollIntoView({block: "center"});
    if (control) { control.focus({preventScroll: true}); }
  }

  // "1.2 s · 34 tokens · 28.3 tokens/s" in the page's language (webapp/pages.py timing_line writes the same).
  function timingText(answer, i18n) {
    var t = answer.timings || {};
    var u = answer.usage || {};
    var lang = document.documentElement.lang || "en";
    function num(x) { return x.toFixed(1).replace(".", i18n.decimal || "."); }
    var parts = [];
    if (t.total_s !== undefined) { parts.push(i18n.timing_s.replace("%(s)s", num(t.total_s))); }
    if (u.completion_tokens !== undefined) {
      var forms = i18n.tokens || {};
      var form = forms[new Intl.PluralRules(lang).select(u.completion_tokens)] || forms.other || forms.many;
      parts.push(form.replace("%(num)d", u.completion_tokens));
    }
    if (t.decode_tok_s) { parts.push(i18n.timing_rate.replace("%(rate)s", num(t.decode_tok_s))); }
    return parts.join(" · ");
  }

  // Calls onEvent(obj) for each `data:` JSON event until `data: [DONE]`.
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) { return; }
      buffer += decoder.decode(chunk.value, {stream: true});
      var cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        var block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        var data = block.split("\n").filter(function (l) { return l.indexOf("data: ") === 0; })
          .map(function (l) { return l.slice(6); }).join("\n");
        if (data === "[DONE]") { return; }
        if (data) { onEvent(JSON.parse(data)); }
      }
    }
  }

  function setup() {
    var form = document.getElementById("chat-form");
    if (!form) { return; }
    var i18n = JSON.parse(document.getElementById("i18n").textContent);
    var csrf = document.querySelector("meta[name=csrf-token]").content;
    var dialog = document.getElementById("dialog");
    var stop = document.getElementById("stop");
    var buttons = form.querySelectorAll("button[type=submit]");
    var fileInput = form.querySelector("input[type=file]");
    var zone = form.querySelector("[data-dropzone]");
    var question = document.getElementById("question");
    var controller = null;

    function busy(on) {
      buttons.forEach(function (b) { b.disabled = on; });
      stop.hidden = !on;
    }

    stop.addEventListener("click", function () { if (controller) { controller.abort(); } });

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      var submitter = event.submitter || buttons[0];
      var data = new FormData(form);
      data.set("action", submitter.value);
      clearErrors(form);
      var file = fileInput.files && fileInput.files[0];
      var asked = submitter.value === "ask" ? String(data.get("question") || "") : submitter.textContent.trim();
      var mine = addBubble(dialog, "user", i18n.you, asked, file ? URL.createObjectURL(file) : null);
      var reply = addBubble(dialog, "assistant pending", i18n.assistant, i18n.thinking);
      var text = "";
      controller = new AbortController();
      busy(true);
      function send() {
        // getAttribute: form.action would be the button named "action"
        return fetch(form.getAttribute("action"), {
          method: "POST", body: data, credentials: "same-origin", signal: controller.signal,
          headers: {"Accept": "text/event-stream", "X-CSRF-Token": csrf}
        });
      }
      try {
        var imageId = zone && zone.preparedId ? await zone.preparedId() : "";
        if (imageId) { data.set("image_id", imageId); data.delete("image"); } else { data.delete("image_id"); }
        var response = await send();
        if (response.status === 404 && imageId && file) {  // the reading expired meanwhile: send the file
          data.delete("image_id");
          data.set("image", file);
          response = await send();
        }
        if (!response.ok) {
          var body = await response.json().catch(function () { return {error: {message: i18n.network}}; });
          removeBubbles(dialog, [mine, reply]);
          showError(form, body.error || {});
          return;
        }
        await readEvents(response, function (obj) {
          if (obj.delta !== undefined) {
            text += obj.delta;
            reply.text.textContent = text;
            reply.node.classList.remove("pending");
          } else if (obj.error) {
            showError(form, obj.error);
          } else if (obj.answer !== undefined) {
            reply.text.textContent = obj.answer;
            reply.timing.textContent = timingText(obj, i18n);
            reply.node.classList.remove("pending");
          }
        });
        question.value = "";
        if (zone && zone.resetPreview) { zone.resetPreview(); }
      } catch (err) {
        reply.node.classList.remove("pending");
        if (err.name === "AbortError") {
          reply.text.textContent = text;  // not "Thinking…" when stopped before the first word
          reply.timing.textContent = i18n.stopped;
        } else {
          showError(form, {message: i18n.network});
        }
      } finally {
        controller = null;
        busy(false);
      }
      // Ready for the next question, with the answer in view (the button pressed had been disabled, which
      // sent the focus back to the top of the page). An error shown instead keeps the view and the focus.
      if (!form.querySelector(".field-error:not([hidden])")) {
        reply.node.scrollIntoView({block: "nearest"});
        question.focus({preventScroll: true});
      }
    });
  }

  document.addEventListener("DOMContentLoaded", setup);
})();
