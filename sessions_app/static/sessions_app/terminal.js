// The admin's live terminal into a session (see terminal.html). It speaks
// GET /execute/ws like any client: one `execute` with "tty": true in the
// session, then keystrokes as `stdin` messages and the terminal's size as
// `resize`; the server's `stdout` events are written to xterm.js.
(function () {
  "use strict";
  var box = document.getElementById("isol8-terminal");
  if (!box) {
    return;
  }
  var state = document.getElementById("isol8-terminal-state");
  var term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.isol8Terminal = term; // for tests and the curious: the xterm.js object

  var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  var url = scheme + "//" + window.location.host + "/execute/ws?token=" + encodeURIComponent(box.dataset.token);
  var socket = new WebSocket(url);
  var running = false;

  function send(message) {
    if (socket.readyState === WebSocket.OPEN && running) {
      socket.send(JSON.stringify(message));
    }
  }

  socket.addEventListener("open", function () {
    socket.send(JSON.stringify({
      type: "execute",
      sessionId: box.dataset.sessionId,
      request: {
        runtime: box.dataset.runtime,
        cmd: box.dataset.command,
        tty: true,
        timeoutMs: parseInt(box.dataset.timeoutMs, 10)
      }
    }));
    running = true;
    send({ type: "resize", cols: term.cols, rows: term.rows });
    state.textContent = "connected";
    box.dataset.state = "connected";
    term.focus();
  });
  socket.addEventListener("message", function (message) {
    var event = JSON.parse(message.data);
    if (event.type === "stdout" || event.type === "stderr") {
      term.write(event.data);
    } else if (event.type === "error") {
      term.write("\r\n[" + event.data + "]\r\n");
    } else if (event.type === "exit") {
      state.textContent = "ended, exit code " + event.data;
      box.dataset.state = "ended";
      running = false;
    }
  });
  socket.addEventListener("close", function () {
    running = false;
    if (box.dataset.state !== "ended") {
      state.textContent = "disconnected";
      box.dataset.state = "disconnected";
    }
  });
  term.onData(function (data) {
    send({ type: "stdin", data: data });
  });
  term.onResize(function (size) {
    send({ type: "resize", cols: size.cols, rows: size.rows });
  });
  window.addEventListener("resize", function () {
    fit.fit();
  });
}());
