// Atlas /login → Management → Cluster: the parts that happen without a page reload.
//
// * Accepting New Client Connections: the checkbox takes effect at once (guide: "via
//   Ajax scripting"). It posts the page's configuration revision; when the document has
//   changed meanwhile, or anything fails, the checkbox goes back and the page says why.
// * Sync Now: started with fetch(), then polled; each traffic node's progress (started,
//   finished, failed) and the Status History are updated in place.
// * Method for Choosing Traffic Nodes: only the chosen method's settings are shown.
//
// The page works without this file (plain form posts). Text from the server is only
// ever set with textContent, never as HTML.
"use strict";

(function () {
  const root = document.getElementById("cluster");
  if (!root || !window.atlas) {
    return;
  }
  const POLL_MS = 600;
  const POLL_LIMIT_MS = 10 * 60 * 1000;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function rowFor(name) {
    const rows = root.querySelectorAll("#traffic-node-table tbody tr");
    for (const row of rows) {
      if (row.dataset.name === name) {
        return row;
      }
    }
    return null;
  }

  function setRevision(revision) {
    if (typeof revision !== "number") {
      return;
    }
    root.dataset.revision = String(revision);
    document.querySelectorAll('input[type="hidden"][name="revision"]').forEach(function (input) {
      input.value = String(revision);
    });
  }

  function showSyncNeeded(needed, names) {
    const warning = document.getElementById("sync-needed");
    if (warning) {
      warning.hidden = !needed;
    }
    if (!Array.isArray(names)) {
      return;
    }
    root.querySelectorAll("#traffic-node-table tbody tr").forEach(function (row) {
      const badge = row.querySelector(".needs-sync");
      if (badge) {
        badge.hidden = names.indexOf(row.dataset.name) < 0;
      }
    });
  }

  function say(text, kind) {
    const box = document.getElementById("accepting-message");
    if (!box) {
      return;
    }
    box.textContent = text;
    box.className = "state " + (kind || "");
    box.setAttribute("role", kind === "bad" ? "alert" : "status");
    box.hidden = false;
  }

  // --- Accepting New Client Connections ------------------------------------------------

  async function toggleAccepting(box) {
    const name = box.dataset.name;
    const wanted = box.checked;
    box.disabled = true;
    let result;
    try {
      result = await window.atlas.post(root.dataset.acceptingUrl, {
        name: name,
        accepting: wanted,
        revision: Number(root.dataset.revision),
      });
    } catch (err) {
      result = { ok: false, status: 0, body: { error: "The server could not be reached (" + err + ")." } };
    }
    box.disabled = false;
    const body = result.body || {};
    if (!result.ok) {
      box.checked = !wanted;
      const why = body.error || ("The change was refused (HTTP " + result.status + ").");
      say("Not changed: " + name + " — " + why, "bad");
      return;
    }
    box.checked = Boolean(body.accepting);
    setRevision(body.revision);
    showSyncNeeded(Boolean(body.sync_needed), body.nodes_needing_sync);
    const row = rowFor(name);
    const draining = row ? row.querySelector(".draining") : null;
    if (draining) {
      const left = body.draining_sessions;
      draining.hidden = !(typeof left === "number" && left > 0);
      draining.textContent = "draining: " + (left || 0) + " sessions left";
    }
    say(body.message || "Saved.", body.confirmed ? "ok" : "warn");
  }

  root.querySelectorAll("input.accepting-toggle").forEach(function (box) {
    box.addEventListener("change", function () {
      toggleAccepting(box);
    });
  });
  // The no-JavaScript Save buttons are inside <noscript>; forms are never submitted here.
  root.querySelectorAll("form.accepting-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
    });
  });

  // --- Sync Now ------------------------------------------------------------------------

  const STATE_KIND = { pending: "off", started: "warn", finished: "ok", failed: "bad" };

  function renderProgress(body) {
    const box = document.getElementById("sync-progress");
    const summary = document.getElementById("sync-summary");
    const list = document.getElementById("sync-nodes");
    if (!box || !summary || !list) {
      return;
    }
    box.hidden = false;
    summary.textContent = body.error || body.summary || "Sync Now is starting…";
    summary.className = body.error ? "bad" : "";
    list.replaceChildren();
    (body.nodes || []).forEach(function (n) {
      const item = el("li", "sync-" + n.state);
      item.append(el("span", "badge " + (STATE_KIND[n.state] || "off"), n.words));
      item.append(" " + n.name + " ");
      item.append(el("span", "muted", "(" + n.address + ")"));
      if (n.message) {
        item.append(" — " + n.message);
      }
      list.append(item);
    });
  }

  function renderHistory(rows) {
    const table = document.getElementById("status-history");
    if (!table || !Array.isArray(rows)) {
      return;
    }
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = el("tr", "empty");
      const td = el("td", "muted", "No status history yet.");
      td.colSpan = 3;
      tr.append(td);
      tbody.append(tr);
      return;
    }
    rows.forEach(function (r) {
      const tr = el("tr", r.status === 0 ? "ok" : "failed");
      tr.append(el("td", "nowrap", r.time), el("td", "code", r.status), el("td", "", r.message));
      tbody.append(tr);
    });
  }

  function applySync(body) {
    renderProgress(body);
    renderHistory(body.history);
    showSyncNeeded(Boolean(body.sync_needed), body.nodes_needing_sync);
  }

  async function getJson(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
    });
    return { ok: response.ok, status: response.status, body: await response.json() };
  }

  async function poll(button) {
    const started = Date.now();
    while (Date.now() - started < POLL_LIMIT_MS) {
      await new Promise(function (resolve) { setTimeout(resolve, POLL_MS); });
      let result;
      try {
        result = await getJson(root.dataset.syncStatusUrl);
      } catch (err) {
        continue;  // a missed poll; the next one catches up
      }
      if (!result.ok) {
        renderProgress({ error: (result.body && result.body.error) || "Sync status unavailable." });
        break;
      }
      applySync(result.body);
      if (!result.body.running) {
        break;
      }
    }
    root.dataset.syncRunning = "false";
    if (button) {
      button.disabled = false;
    }
  }

  const syncForm = document.getElementById("sync-form");
  if (syncForm) {
    const button = syncForm.querySelector("button");
    syncForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      button.disabled = true;
      let result;
      try {
        result = await window.atlas.post(root.dataset.syncUrl, {});
      } catch (err) {
        result = { ok: false, status: 0, body: { error: "The server could not be reached (" + err + ")." } };
      }
      const body = result.body || { error: "Sync Now was refused (HTTP " + result.status + ")." };
      applySync(body);
      if (result.ok) {
        root.dataset.syncRunning = "true";
        poll(button);
      } else {
        button.disabled = false;
      }
    });
    if (root.dataset.syncRunning === "true") {
      button.disabled = true;
      poll(button);
    }
  }

  // --- Method for Choosing Traffic Nodes -------------------------------------------------

  const method = document.getElementById("f-method");
  if (method) {
    const showMethod = function () {
      root.querySelectorAll(".method-settings").forEach(function (group) {
        const uses = (group.dataset.methods || "").split(" ");
        // A group with a problem stays visible so its message is seen.
        group.hidden = uses.indexOf(method.value) < 0 && !group.querySelector(".field-error");
      });
      root.querySelectorAll(".method-notes li").forEach(function (item) {
        item.hidden = item.dataset.method !== method.value;
      });
    };
    method.addEventListener("change", showMethod);
    showMethod();
  }
})();
