// The node interpreter of a stateful session: cells in one global context, through node's REPL.
//
// Started by the launcher (isol8_launcher/kernel.py) as the code user. Cells come
// on fd 3, one JSON line each ({"id", "code", "env"}); events go to fd 4, one JSON
// line each: "ready" once, "display" for each display(...) call (then the launcher's
// byte on fd 5), "done" after each cell with its value (util.inspect as text/plain)
// and its exception.
//
// node's REPL evaluates the cells: let/const and functions persist between cells,
// top-level await works, builtin modules are globals, `require` works. SIGINT (the
// launcher's interrupt at the deadline) breaks a running synchronous cell
// (breakEvalOnSigint) or abandons an awaiting one; between cells it is ignored.
"use strict";

const fs = require("fs");
const readline = require("readline");
const repl = require("repl");
const util = require("util");
const { PassThrough, Writable } = require("stream");

const CELL_FD = 3;
const EVENTS_FD = 4;
const ACK_FD = 5;
const MAX_TEXT = 1024 * 1024;
const KERNEL_FILE = __filename;

function writeAll(fd, text) {
  const data = Buffer.from(text);
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(fd, data, offset);
    } catch (err) {
      if (err.code !== "EAGAIN") throw err;
    }
  }
}

function emit(event) {
  writeAll(EVENTS_FD, JSON.stringify(event) + "\n");
}

function plain(value) {
  const text = typeof value === "string" ? util.inspect(value) : util.inspect(value, { depth: 4 });
  return text.length <= MAX_TEXT ? text : text.slice(0, MAX_TEXT) + "…";
}

function isBundle(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    && Object.keys(value).length > 0 && Object.keys(value).every((key) => key.includes("/"));
}

// display(value): its text/plain. display({"text/html": ...}, {raw: true}): that MIME bundle.
// Synchronous: what the cell printed before is in the pipe (stdout and stderr block),
// and the launcher's byte on fd 5 says it read it, so the stream keeps the order.
function display(value, options) {
  const data = options && options.raw && isBundle(value) ? value : { "text/plain": plain(value) };
  emit({ type: "display", data, ack: true });
  try {
    fs.readSync(ACK_FD, Buffer.alloc(1));
  } catch (err) {
    if (err.code !== "EAGAIN" && err.code !== "EBADF") throw err;
  }
}

// The user's frames of a stack: the kernel's, the REPL's and node's own are left out.
function userStack(err) {
  const lines = String(err.stack || "").split("\n");
  return lines.filter((line) => !/^\s+at /.test(line)
    || (line.includes("<cell ") && !line.includes(KERNEL_FILE)));
}

function describe(err) {
  if (err instanceof Error || (err && typeof err === "object" && "stack" in err)) {
    const traceback = userStack(err).map((line) => line + "\n");
    return { ename: err.name || "Error", evalue: String(err.message ?? ""), traceback };
  }
  const text = "Uncaught " + plain(err);
  return { ename: "Error", evalue: plain(err), traceback: [text + "\n"] };
}

// Resolves once what the cell wrote to stdout and stderr has left the process.
function flushed() {
  const streams = [process.stdout, process.stderr].filter((s) => s.writableLength > 0);
  return Promise.all(streams.map((s) => new Promise((resolve) => s.write("", resolve))));
}

class Kernel {
  constructor() {
    this.server = repl.start({
      prompt: "",
      input: new PassThrough(),
      output: new Writable({ write: (chunk, encoding, callback) => callback() }),
      terminal: false,
      useGlobal: true,
      breakEvalOnSigint: true,
      ignoreUndefined: true,
      preview: false,
    });
    this.pending = null; // the running cell's finish(err, value)
    // The REPL reports a cell's exception to its domain, not to the callback:
    // it goes to the running cell, or (a timer's, between cells) to stderr.
    this.server._domain.removeAllListeners("error");
    this.server._domain.on("error", (err) => {
      if (this.pending) this.pending(err, undefined);
      else process.stderr.write("Uncaught " + userStack(err).join("\n") + "\n");
    });
    globalThis.display = display;
    // Between cells SIGINT is ignored; a cell awaiting a promise is abandoned (the promise stays).
    // While a cell's synchronous part runs the REPL's watchdog breaks it, and only
    // without a listener: ours is off then.
    this.onSigint = () => {
      if (this.pending) this.pending(new Error("Script execution was interrupted by `SIGINT`"), undefined);
    };
    this.queue = [];
    this.busy = false;
  }

  serve() {
    process.on("SIGINT", this.onSigint);
    const lines = readline.createInterface({ input: fs.createReadStream(null, { fd: CELL_FD }) });
    lines.on("line", (line) => {
      this.queue.push(line);
      this.next();
    });
    lines.on("close", () => process.exit(0));
    emit({ type: "ready" });
  }

  next() {
    if (this.busy || this.queue.length === 0) return;
    this.busy = true;
    let request;
    try {
      request = JSON.parse(this.queue.shift());
    } catch (err) {
      request = { id: 0, code: "" };
    }
    this.cell(request).finally(() => {
      this.busy = false;
      this.next();
    });
  }

  async cell(request) {
    // The request's variables and secrets, for this cell only.
    const env = Object.entries(request.env || {});
    const before = env.map(([name]) => [name, process.env[name]]);
    for (const [name, value] of env) process.env[name] = String(value);
    const [err, value] = await this.evaluate(String(request.code || ""), `<cell ${request.id || 0}>`);
    for (const [name, previous] of before) {
      if (previous === undefined) delete process.env[name];
      else process.env[name] = previous;
    }
    let exception = null;
    let bundle = null;
    if (err !== null) {
      exception = describe(err && err.constructor && err.constructor.name === "Recoverable" ? err.err : err);
      process.stderr.write(exception.traceback.join(""));
    } else if (value !== undefined) {
      globalThis._ = value;
      bundle = { "text/plain": plain(value) };
    }
    await flushed();
    emit({ type: "done", id: request.id || 0, status: exception ? "error" : "ok", value: bundle, exception });
  }

  evaluate(code, filename) {
    return new Promise((resolve) => {
      const finish = (err, value) => {
        if (this.pending !== finish) return;
        this.pending = null;
        resolve([err === undefined ? null : err, value]);
      };
      this.pending = finish;
      process.removeListener("SIGINT", this.onSigint);
      try {
        this.server.eval(code, this.server.context, filename, finish);
      } catch (err) {
        finish(err, undefined);
      } finally {
        process.on("SIGINT", this.onSigint);
      }
    });
  }
}

// Output is written before the call that wrote it returns (node buffers pipe writes otherwise).
for (const stream of [process.stdout, process.stderr]) {
  if (stream._handle && typeof stream._handle.setBlocking === "function") stream._handle.setBlocking(true);
}
new Kernel().serve();
