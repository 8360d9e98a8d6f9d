// A watch page: what the target sends the watched client, as text (no terminal emulation);
// on a writable route, a line of input goes to the target.
"use strict";
(function () {
  const base = document.body.dataset.base;
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const screen = document.getElementById("screen");
  const state = document.getElementById("state");
  const form = document.getElementById("input");
  const decoder = new TextDecoder("utf-8");
  const MAX_TEXT = 200000;
  document.getElementById("session").textContent = id;

  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + base + "/watch/" + encodeURIComponent(id));
  socket.binaryType = "arraybuffer";
  socket.onopen = function () { state.textContent = "watching"; };
  socket.onmessage = function (event) {
    const text = typeof event.data === "string" ? event.data : decoder.decode(event.data, {stream: true});
    // Control sequences are shown as they are: this is a log of output, not a terminal.
    screen.textContent = (screen.textContent + text).slice(-MAX_TEXT);
    screen.scrollTop = screen.scrollHeight;
  };
  socket.onclose = function (event) {
    state.textContent = "closed: " + event.code + " " + event.reason;
    form.hidden = true;
  };
  form.onsubmit = function (event) {
    event.preventDefault();
    const line = document.getElementById("line");
    socket.send(line.value + (document.getElementById("newline").checked ? "\n" : ""));
    line.value = "";
  };
  const writable = new URLSearchParams(location.search).get("write") === "1";
  form.hidden = !writable;
})();
