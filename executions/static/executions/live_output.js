// Follows a running execution's output on its admin page (see change_form.html).
// Events carry an `event:` type, so they are listened for by type; the stream
// ends after `exit`, and the EventSource is closed then (or it would reconnect).
(function () {
  "use strict";
  var panel = document.getElementById("live-output");
  var url = panel && panel.dataset.eventsUrl;
  if (!url) {
    return;
  }
  var state = document.getElementById("live-state");
  var out = { stdout: document.getElementById("live-stdout"), stderr: document.getElementById("live-stderr") };
  var source = new EventSource(url);
  ["stdout", "stderr"].forEach(function (kind) {
    source.addEventListener(kind, function (message) {
      out[kind].textContent += JSON.parse(message.data).data;
      out[kind].scrollTop = out[kind].scrollHeight;
    });
  });
  source.addEventListener("error", function (message) {
    if (message.data) {
      out.stderr.textContent += "\n[" + JSON.parse(message.data).data + "]";
    }
  });
  source.addEventListener("exit", function (message) {
    state.textContent = "finished, exit code " + JSON.parse(message.data).data;
    panel.dataset.finished = "true";
    source.close();
  });
}());
