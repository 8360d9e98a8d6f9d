// The status page: one JSON snapshot per message from BASE/live; no library.
"use strict";
(function () {
  const base = document.body.dataset.base;
  const state = document.getElementById("state");

  function cell(row, text, numeric) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (numeric) td.className = "n";
    return td;
  }

  function fill(id, items, draw) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren();
    for (const item of items) draw(body.insertRow(), item);
  }

  // A balanced route's targets, one a line: open sessions on each, and which are marked down.
  function targets(td, list) {
    for (const t of list) {
      const line = document.createElement("div");
      line.className = t.down ? "target bad" : "target";
      line.textContent = t.target + ": " + t.open + " open" + (t.down ? ", down" : "");
      td.appendChild(line);
    }
  }

  function show(data) {
    fill("sessions", data.sessions, function (row, s) {
      row.dataset.session = s.id;
      cell(row, s.id); cell(row, s.peer); cell(row, s.route); cell(row, s.path); cell(row, s.target);
      cell(row, s.age.toFixed(1), true); cell(row, s.bytes_from_client, true); cell(row, s.bytes_to_client, true);
      cell(row, s.watchers, true);
      const td = row.insertCell();
      if (s.watch !== "off") {
        const a = document.createElement("a");
        a.href = base + "/watch/" + encodeURIComponent(s.id) + (s.watch === "write" ? "?write=1" : "");
        a.textContent = s.watch === "write" ? "watch (writable)" : "watch";
        td.appendChild(a);
      }
    });
    fill("routes", data.routes, function (row, r) {
      cell(row, r.route);
      if (r.targets) targets(row.insertCell(), r.targets); else cell(row, r.target);
      cell(row, r.watch);
    });
    fill("programs", data.programs, function (row, p) {
      cell(row, p.name); cell(row, p.mode); cell(row, p.pid, true);
      cell(row, p.running ? "running" : "not running").className = p.running ? "" : "bad";
      cell(row, p.restarts, true);
    });
    const more = data.more_sessions ? " (" + data.more_sessions + " more not listed)" : "";
    const worker = data.worker ? "worker " + data.worker + " (each worker has its own sessions); " : "";
    state.textContent = (data.stopping ? "shutting down; " : "live; ") + worker + data.sessions.length +
      " open sessions" + more + ", " + data.opened_total + " opened in all";
    state.className = data.stopping ? "bad" : "";
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + base + "/live");
    socket.onmessage = function (event) { show(JSON.parse(event.data)); };
    socket.onclose = function (event) {
      state.textContent = "disconnected (" + event.code + "); reconnecting in 2 s";
      state.className = "bad";
      setTimeout(connect, 2000);
    };
  }
  connect();
})();
