// Atlas /login: small helpers for pages that update live (no build step, no framework).
// Pages work without this file; it only adds what the design asks to happen without a
// reload (e.g. the Accepting checkbox of a traffic node).
"use strict";

(function () {
  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // fetch() with the session's CSRF token; same-origin only, JSON in and out.
  async function post(url, data) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRF-Token": csrfToken(),
      },
      body: JSON.stringify(data === undefined ? {} : data),
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body: body };
  }

  window.atlas = { csrfToken: csrfToken, post: post };
})();
