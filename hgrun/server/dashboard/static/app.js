// hgrun dashboard: live regions, the run log, the "Run now" JSON editor.
// Loaded as a file (the Content-Security-Policy allows no inline script); no third-party code.
"use strict";

const POLL_MS = 1500;

async function fetchText(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) { location.assign("/signin?next=" + encodeURIComponent(location.pathname)); return null; }
  return response.ok ? response.text() : null;
}

// A region with data-live="URL" is re-rendered by the server and swapped in when it changed.
function liveRegion(region) {
  let last = null;
  async function tick() {
    if (!document.hidden) {
      try {
        const html = await fetchText(region.dataset.live);
        // The first answer is swapped in too: the page may have changed since it was rendered.
        if (html !== null && html !== last) {
          const focused = document.activeElement;
          const href = focused && region.contains(focused) ? focused.getAttribute("href") : null;
          region.innerHTML = html;  // server-rendered and escaped; scripts in it never run
          if (href) { const again = region.querySelector(`[href="${CSS.escape(href)}"]`); if (again) again.focus(); }
          last = html;
        }
      } catch (e) { /* the server is restarting: try again at the next tick */ }
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
}

// The run's output: every page from the start, then new output while the run is active.
function runLog(pre) {
  const state = document.getElementById("logstate");
  let cursor = 0;
  async function step() {
    let page;
    try {
      const response = await fetch(`${pre.dataset.log}?after=${cursor}`, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) { state.textContent = `could not read the log (${response.status})`; return; }
      page = await response.json();
    } catch (e) { setTimeout(step, POLL_MS); return; }
    if (page.text) {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(document.createTextNode(page.text));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    cursor = page.next;
    if (page.more) { state.textContent = "loading…"; setTimeout(step, 0); return; }
    if (page.active) { state.textContent = "live: new output appears as the run writes it"; setTimeout(step, 1000); return; }
    pre.dataset.done = "1";
    state.textContent = pre.textContent ? "end of output" : "no output";
  }
  step();
}

// "Run now": the input must be JSON (or empty) before it is sent.
function runNow(form) {
  const input = form.querySelector("textarea");
  const note = form.querySelector(".inputstate");
  const button = form.querySelector("button");
  function check() {
    const text = input.value.trim();
    if (!text) { note.textContent = "no input"; input.removeAttribute("aria-invalid"); button.disabled = false; return true; }
    try { JSON.parse(text); } catch (e) {
      note.textContent = "not valid JSON: " + e.message; input.setAttribute("aria-invalid", "true"); button.disabled = true; return false;
    }
    note.textContent = "valid JSON"; input.removeAttribute("aria-invalid"); button.disabled = false; return true;
  }
  input.addEventListener("input", check);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!check()) return;
    button.disabled = true;
    note.textContent = "starting…";
    try {
      const response = await fetch(form.dataset.url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: input.value.trim(),
      });
      const body = await response.json();
      if (response.ok) { location.assign(body.url); return; }
      note.textContent = body.message + (body.hint ? ` (${body.hint})` : "");
    } catch (e) { note.textContent = "could not reach the server"; }
    button.disabled = false;
  });
  check();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(liveRegion);
  document.querySelectorAll("pre[data-log]").forEach(runLog);
  const form = document.getElementById("runnow");
  if (form) runNow(form);
});
