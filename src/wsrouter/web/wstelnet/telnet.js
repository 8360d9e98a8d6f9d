// A telnet client's option negotiation (RFC 854/855), enough for telnetd:
// ECHO (RFC 857) and SUPPRESS-GO-AHEAD (RFC 858) from the server,
// TERMINAL-TYPE (RFC 1091) and NAWS (RFC 1073) from us; every other option
// is refused.  Pure: fed bytes, it returns the data to show and the bytes to
// send back, so it can be tested without a socket.
"use strict";
(function (root) {
  const IAC = 255, DONT = 254, DO = 253, WONT = 252, WILL = 251, SB = 250, SE = 240;
  const ECHO = 1, SGA = 3, TTYPE = 24, NAWS = 31;
  const TTYPE_IS = 0, TTYPE_SEND = 1;
  const THEIRS = new Set([ECHO, SGA]);      // options we let the server enable (it WILLs, we DO)
  const OURS = new Set([TTYPE, NAWS, SGA]); // options we enable when asked (it DOs, we WILL)

  class Telnet {
    constructor(terminalType) {
      this.terminalType = terminalType || "xterm-256color";
      this.state = 0;          // 0 data, 1 after IAC, 2 after a verb, 3 in SB, 4 IAC in SB
      this.verb = 0;
      this.sb = [];
      this.them = new Set();   // options enabled on the server's side
      this.us = new Set();     // options enabled on our side
      this.size = null;        // [columns, rows] to report with NAWS
    }

    // Bytes from the server: {data: Uint8Array to show, reply: Uint8Array to send}.
    receive(bytes) {
      const data = [], reply = [];
      for (const b of bytes) {
        switch (this.state) {
          case 0:
            if (b === IAC) this.state = 1; else data.push(b);
            break;
          case 1:
            if (b === IAC) { data.push(IAC); this.state = 0; }
            else if (b === DO || b === DONT || b === WILL || b === WONT) { this.verb = b; this.state = 2; }
            else if (b === SB) { this.sb = []; this.state = 3; }
            else this.state = 0;  // NOP, GA, DM, ...: nothing to do
            break;
          case 2:
            this.negotiate(this.verb, b, reply);
            this.state = 0;
            break;
          case 3:
            if (b === IAC) this.state = 4;
            else if (this.sb.length < 256) this.sb.push(b);
            break;
          case 4:
            if (b === SE) { this.subnegotiation(this.sb, reply); this.state = 0; }
            else { if (b === IAC && this.sb.length < 256) this.sb.push(IAC); this.state = 3; }
            break;
        }
      }
      return { data: Uint8Array.from(data), reply: Uint8Array.from(reply) };
    }

    negotiate(verb, option, reply) {
      if (verb === WILL) {
        if (THEIRS.has(option)) {
          if (!this.them.has(option)) { this.them.add(option); reply.push(IAC, DO, option); }
        } else reply.push(IAC, DONT, option);
      } else if (verb === WONT) {
        if (this.them.delete(option)) reply.push(IAC, DONT, option);
      } else if (verb === DO) {
        if (OURS.has(option)) {
          if (!this.us.has(option)) {
            this.us.add(option);
            reply.push(IAC, WILL, option);
            if (option === NAWS && this.size) reply.push(...this.naws(...this.size));
          }
        } else reply.push(IAC, WONT, option);
      } else if (verb === DONT) {
        if (this.us.delete(option)) reply.push(IAC, WONT, option);
      }
    }

    subnegotiation(sb, reply) {
      if (sb[0] === TTYPE && sb[1] === TTYPE_SEND && this.us.has(TTYPE)) {
        const name = Array.from(this.terminalType, (c) => c.charCodeAt(0) & 0x7f);
        reply.push(IAC, SB, TTYPE, TTYPE_IS, ...name, IAC, SE);
      }
    }

    // The NAWS report for a window of columns x rows (255 doubled, as in data).
    naws(columns, rows) {
      const body = [columns >> 8, columns & 255, rows >> 8, rows & 255].flatMap((b) => (b === IAC ? [IAC, IAC] : [b]));
      return [IAC, SB, NAWS, ...body, IAC, SE];
    }

    // The window changed: the bytes to send (none until the server asked for NAWS).
    resize(columns, rows) {
      this.size = [columns, rows];
      return Uint8Array.from(this.us.has(NAWS) ? this.naws(columns, rows) : []);
    }

    // Typed bytes to send: IAC doubled; a CR not followed by LF becomes CR NUL (RFC 854).
    send(bytes) {
      const out = [];
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i];
        out.push(b);
        if (b === IAC) out.push(IAC);
        else if (b === 13 && bytes[i + 1] !== 10) out.push(0);
      }
      return Uint8Array.from(out);
    }
  }

  root.Telnet = Telnet;
  if (typeof module === "object" && module.exports) module.exports = { Telnet };
})(typeof window === "object" ? window : globalThis);
