// hgrun dashboard: a shell in the page. xterm.js (served by hgrun from npm's @xterm/xterm) over
// the attach WebSocket, speaking the Kubernetes channel protocol like the CLI: a channel byte,
// then the payload; 0 stdin, 1 stdout, 2 stderr, 3 status (JSON, carries the exit code),
// 4 resize (JSON {"Width", "Height"}).
"use strict";

(function stampStyleNonce() {
  // xterm.js measures the font and writes cell sizes into <style> elements it creates; the
  // page's CSP admits <style> only with this response's nonce, so stamp it at creation.
  const meta = document.querySelector('meta[name="hgrun-style-nonce"]');
  const nonce = meta ? meta.content : "";
  if (!nonce) return;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    const element = create.call(this, tag, options);
    if (String(tag).toLowerCase() === "style") element.setAttribute("nonce", nonce);
    return element;
  };
})();

const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4;
const encoder = new TextEncoder();

function frame(channel, bytes) {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = channel;
  out.set(bytes, 1);
  return out;
}

function exitCode(status) {
  if (status.status === "Success") return 0;
  const causes = (status.details && status.details.causes) || [];
  const cause = causes.find((c) => c.reason === "ExitCode");
  return cause ? parseInt(cause.message, 10) : 1;
}

function shell() {
  const form = document.getElementById("shellform");
  const state = document.getElementById("shellstate");
  const box = document.getElementById("terminal");
  if (!window.Terminal || !window.FitAddon) {
    state.textContent = "The terminal code is missing on this server (run scripts/setup, which installs it with npm).";
    return;
  }
  let term = null;

  function terminal() {
    if (term) term.dispose();
    box.replaceChildren();
    term = new window.Terminal({ cursorBlink: true, convertEol: false, fontSize: 15, scrollback: 5000 });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    fit.fit();
    window.addEventListener("resize", () => fit.fit());
    return term;
  }

  async function priorOutput(id) {
    // After a reload: what the run already wrote, so the screen is not blank; the attach then
    // carries on from now. A run that ended is replayed whole by the attach itself.
    let cursor = 0, text = "";
    for (;;) {
      const response = await fetch(`/runs/${id}/log?after=${cursor}`, { credentials: "same-origin" });
      if (!response.ok) return "";
      const page = await response.json();
      text += page.text; cursor = page.next;
      if (!page.more) return page.active ? text : "";
    }
  }

  async function attach(id, reattached) {
    const t = terminal();
    if (reattached) t.write(await priorOutput(id));
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${proto}//${location.host}/v1/runs/${id}/attach`, ["v5.channel.k8s.io", "v4.channel.k8s.io"]);
    socket.binaryType = "arraybuffer";
    let exited = false;
    const resize = () => {
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(frame(RESIZE, encoder.encode(JSON.stringify({ Width: t.cols, Height: t.rows }))));
      }
    };
    socket.onopen = () => {
      state.textContent = `run.${id}: connected. Type exit to end it.`;
      box.dataset.run = String(id);
      resize();
      t.focus();
    };
    t.onResize(resize);
    t.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(frame(STDIN, encoder.encode(data))); });
    t.onBinary((data) => {
      const bytes = Uint8Array.from(data, (c) => c.charCodeAt(0) & 255);
      if (socket.readyState === WebSocket.OPEN) socket.send(frame(STDIN, bytes));
    });
    socket.onmessage = (event) => {
      const bytes = new Uint8Array(event.data);
      if (!bytes.length) return;
      const channel = bytes[0], payload = bytes.subarray(1);
      if (channel === STDOUT || channel === STDERR) t.write(payload);
      else if (channel === STATUS) {
        exited = true;
        const code = exitCode(JSON.parse(new TextDecoder().decode(payload)));
        box.dataset.exit = String(code);
        state.textContent = `run.${id} ended: exit code ${code}`;
        state.dataset.exit = String(code);
        form.querySelector("button").disabled = false;
      }
    };
    socket.onclose = () => {
      if (!exited) {
        state.textContent = `run.${id}: disconnected. Reload the page within the grace period to attach again.`;
      }
      form.querySelector("button").disabled = false;
    };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    state.textContent = "starting…";
    try {
      const response = await fetch(form.dataset.url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify({ command: form.querySelector("input[name=command]").value }),
      });
      const body = await response.json();
      if (!response.ok) { state.textContent = body.message + (body.hint ? ` (${body.hint})` : ""); button.disabled = false; return; }
      history.replaceState(null, "", body.url);
      attach(body.id, false);
    } catch (e) { state.textContent = "could not reach the server"; button.disabled = false; }
  });

  if (form.dataset.reattach) {
    form.querySelector("button").disabled = true;
    attach(parseInt(form.dataset.reattach, 10), true);
  }
}

document.addEventListener("DOMContentLoaded", shell);
