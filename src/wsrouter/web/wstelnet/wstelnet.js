// wstelnet: a browser terminal (xterm.js) for wsrouter routes.  Three modes:
//   telnet  a telnet server behind a stream route (telnetd): options are
//           negotiated (telnet.js) and window sizes sent with NAWS;
//   raw     any stream route: bytes both ways, unchanged;
//   pty     an exec: route with pty = true: typed input in text messages,
//           the window size in a binary control message {"columns","rows"}
//           (docs/terminal.md).
// Presets come from the query string (?host=&port=&path=&wss=1&mode=&connect=1
// &embedded=1) and the token from the fragment (#token=...), which browsers
// never send to the server; it goes to the route as ?access_token=.
// In a file of its own: the web root's Content-Security-Policy runs no inline script.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const encoder = new TextEncoder();

  const term = new Terminal({ convertEol: false, scrollback: 2000, fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));

  // What the browser tests (and a curious user) can look at.
  const page = {
    term,
    ws: null,
    mode: null,
    sent: { resize: [] },          // every window size sent to the route
    screen() {                     // the terminal's text, lines joined by \n
      const buffer = term.buffer.active, lines = [];
      for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
      return lines.join("\n");
    },
  };
  window.wstelnet = page;

  $("host").value = params.get("host") || location.hostname;
  $("port").value = params.get("port") || location.port || (location.protocol === "https:" ? "443" : "80");
  $("path").value = params.get("path") || "/";
  $("wss").checked = params.has("wss") ? params.get("wss") === "1" : location.protocol === "https:";
  $("mode").value = params.get("mode") || "telnet";
  $("token").value = fragment.get("token") || "";
  if (params.get("embedded") === "1") document.body.classList.add("embedded");

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  function target() {
    const host = $("host").value.trim();
    const port = $("port").value.trim();
    let path = $("path").value.trim() || "/";
    if (!path.startsWith("/")) path = "/" + path;
    const url = new URL((($("wss").checked) ? "wss://" : "ws://") + (host.includes(":") ? "[" + host + "]" : host) +
                        (port ? ":" + port : "") + path);
    const token = $("token").value;
    if (token) url.searchParams.set("access_token", token);
    return url;
  }

  let telnet = null;

  function sendBytes(bytes) {
    if (page.ws && page.ws.readyState === WebSocket.OPEN && bytes.length) page.ws.send(bytes);
  }

  function sendSize() {
    const size = [term.cols, term.rows];
    if (!page.ws || page.ws.readyState !== WebSocket.OPEN) return;
    if (page.mode === "pty") {
      page.ws.send(encoder.encode(JSON.stringify({ columns: size[0], rows: size[1] })));
      page.sent.resize.push(size);
    } else if (page.mode === "telnet") {
      const naws = telnet.resize(size[0], size[1]);
      if (naws.length) { sendBytes(naws); page.sent.resize.push(size); }
    }
  }

  function connect() {
    disconnect();
    let url;
    try { url = target(); } catch (e) { status("bad address: " + e.message, true); return; }
    page.mode = $("mode").value;
    telnet = page.mode === "telnet" ? new Telnet("xterm-256color") : null;
    if (telnet) telnet.resize(term.cols, term.rows);
    const shown = new URL(url); shown.searchParams.delete("access_token");
    status("connecting to " + shown);
    const ws = new WebSocket(url, page.mode === "pty" ? [] : ["binary"]);
    ws.binaryType = "arraybuffer";
    page.ws = ws;
    ws.onopen = () => {
      status("connected to " + shown + " (" + page.mode + ")");
      $("connect-button").disabled = true;
      $("disconnect-button").disabled = false;
      term.focus();
      sendSize();
    };
    ws.onmessage = (event) => {
      const bytes = typeof event.data === "string" ? encoder.encode(event.data) : new Uint8Array(event.data);
      if (telnet) {
        const { data, reply } = telnet.receive(bytes);
        sendBytes(reply);
        if (data.length) term.write(data);
      } else term.write(bytes);
    };
    ws.onclose = (event) => {
      if (page.ws !== ws) return;
      page.ws = null;
      $("connect-button").disabled = false;
      $("disconnect-button").disabled = true;
      const why = event.code === 1006 ? "connection failed or dropped (is the address right? see the router's log)"
        : event.code + (event.reason ? " " + event.reason : "");
      status("closed: " + why, event.code !== 1000);
    };
  }

  function disconnect() {
    if (page.ws) { const ws = page.ws; page.ws = null; ws.close(1000); }
    $("connect-button").disabled = false;
    $("disconnect-button").disabled = true;
  }

  term.onData((text) => {
    if (!page.ws) return;
    if (page.mode === "pty") { if (page.ws.readyState === WebSocket.OPEN) page.ws.send(text); }
    else {
      const bytes = encoder.encode(text);
      sendBytes(telnet ? telnet.send(bytes) : bytes);
    }
  });
  term.onBinary((text) => {  // mouse reports in legacy encodings: one byte per character
    const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0) & 255);
    if (page.mode !== "pty") sendBytes(telnet ? telnet.send(bytes) : bytes);
  });
  term.onResize(sendSize);

  $("connect").onsubmit = (e) => { e.preventDefault(); connect(); };
  $("disconnect-button").onclick = disconnect;
  window.addEventListener("resize", () => fit.fit());
  fit.fit();
  if (params.get("connect") === "1") connect();
})();
