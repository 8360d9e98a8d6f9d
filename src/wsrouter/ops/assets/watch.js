// A watch page: the watched session's screen in a terminal (the bundled xterm.js), fed with
// what the target sends the client (a pty's output is binary: bytes, rendered as a terminal
// does).  The page follows the session's window size from the status feed (STATUS/live),
// which also says whether the route lets watchers type (watch = "write"): then keys typed
// here go to the target as the client's would; otherwise the terminal takes no input.
"use strict";
(function () {
  const base = document.body.dataset.base;
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const state = document.getElementById("state");
  const access = document.getElementById("access");
  const sizeNote = document.getElementById("size");
  document.getElementById("session").textContent = id;

  const term = new Terminal({ cols: 80, rows: 24, scrollback: 2000, fontSize: 14, disableStdin: true });
  term.open(document.getElementById("screen"));
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  let writable = false;

  // What the browser tests (and a curious user) can look at.
  window.watch = {
    term,
    state: () => state.textContent,
    writable: () => writable,
    screen() {                     // the visible screen's text, lines joined by \n
      const buffer = term.buffer.active, lines = [];
      for (let i = 0; i < term.rows; i++) lines.push(buffer.getLine(buffer.viewportY + i).translateToString(true));
      return lines.join("\n");
    },
  };

  // The watch socket opens once the first snapshot has sized the terminal: the session's latest
  // output, replayed first, then draws at the session's size.
  let socket = null;
  function watch() {
    if (socket) return;
    socket = new WebSocket(scheme + location.host + base + "/watch/" + encodeURIComponent(id));
    socket.binaryType = "arraybuffer";
    socket.onopen = function () { state.textContent = "watching"; };
    socket.onmessage = function (event) {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = function (event) {
      state.textContent = "closed: " + event.code + " " + event.reason;
      writable = false;
      term.options.disableStdin = true;
      feed.close();
    };
  }
  term.onData(function (data) {
    if (writable && socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  });

  // The status feed: the session's window size and whether watchers may type.
  const feed = new WebSocket(scheme + location.host + base + "/live");
  feed.onclose = watch;
  feed.onerror = watch;
  feed.onmessage = function (event) {
    const data = JSON.parse(event.data);
    const session = (data.sessions || []).find(function (s) { return s.id === id; });
    if (!session) { watch(); return; }
    update(session);
    watch();
  };

  function update(session) {
    const canWrite = session.watch === "write" && socket !== null && socket.readyState === WebSocket.OPEN;
    if (canWrite !== writable) {
      writable = canWrite;
      term.options.disableStdin = !writable;
      access.textContent = writable ? "writable: what you type goes to the session" : "read-only";
    }
    const size = session.terminal;
    if (size && (size[0] !== term.cols || size[1] !== term.rows)) {
      term.resize(size[0], size[1]);
    }
    sizeNote.textContent = size ? size[0] + "×" + size[1] : "";
  }
})();
