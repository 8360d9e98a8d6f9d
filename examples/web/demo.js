// The demo page's script, in a file of its own: the web root's default
// Content-Security-Policy runs no inline scripts (docs/security.md).
const log = document.getElementById("log");
const say = (line) => { log.textContent += line + "\n"; };
const url = new URL("echo", location.href.replace(/^http/, "ws"));
const ws = new WebSocket(url, ["binary"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => say("open " + url + " (subprotocol " + ws.protocol + ")");
ws.onmessage = (e) => say("< " + (typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data)));
ws.onclose = (e) => say("closed " + e.code + " " + e.reason);
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const text = document.getElementById("text").value;
  ws.send(new TextEncoder().encode(text));
  say("> " + text);
};

// The shell: the bundled terminal page in a frame, handed this page's token
// in its #fragment (never sent to the server).
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const shell = document.getElementById("shell");
if (token) {
  shell.src = "/term/wstelnet.html?path=/shell&mode=pty&connect=1&embedded=1#token=" + encodeURIComponent(token);
} else {
  shell.hidden = true;
  document.getElementById("no-token").hidden = false;
}
