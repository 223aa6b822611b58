/* kpi-sidecar admin page: reads the JSON API of the admin port and draws it; no build step.
 *
 * Rules kept here: DOM built with createElement/textContent only (the CSP's Trusted Types forbid
 * turning strings into markup), every request relative to this page (same origin), the admin token kept in this tab's
 * sessionStorage only, polling paused while the tab is hidden. Fields other releases add to /status
 * (`forecast`) are shown when present and ignored when absent; the fleet comes from GET /fleet.
 */
(() => {
  "use strict";

  const API = "api/backpressure";
  const TOKEN_KEY = "kpi-sidecar-admin-token";
  const LEVELS = ["none", "low", "medium", "high", "critical"];
  const SIGNALS = [
    ["memory", "memory", "Memory"],
    ["cpu", "cpu", "CPU"],
    ["queue", "queue", "Queue"],
    ["publishRate", "publish_rate", "Publish rate"],
    ["upstreamLatency", "upstream_latency", "Upstream latency"],
    ["queueDelay", "queue_delay", "Queue delay"],
    ["predictedQueue", "predicted_queue", "Predicted queue"],
  ];
  // Refresh period of the history per plot range: its step, at least 2 s.
  const HISTORY_EVERY_MS = { "5m": 2000, "1h": 10000, "24h": 60000 };
  const RANGE_SECONDS = { "5m": 300, "1h": 3600, "24h": 86400 };
  // In between, only the new points are asked for (`since`): a few hundred bytes instead of ~150 KB.
  const FULL_HISTORY_EVERY_MS = 60000;
  const PLOT_HEIGHT = 220;
  // Okabe-Ito palette: distinguishable with the common colour-vision deficiencies; lines also differ
  // by dash pattern and every series is named in the legend.
  const COLOURS = ["#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8c564b"];
  const DASHES = [null, [8, 4], [2, 3], [10, 3, 2, 3], [4, 4], [1, 2], [12, 6], [6, 2, 2, 2]];

  const state = {
    range: "5m",
    paused: false,
    status: null,
    history: null,
    historyFetchedAt: 0,
    breakers: [],
    plots: {},
    pollers: {},
    lastOk: null,
  };

  // -- small helpers ------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "scope") {
        node.setAttribute(key, value === true ? "" : String(value));
      } else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  const numberFormats = new Map();
  function fmtNum(value, digits = 0) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (!Number.isFinite(value) || Math.abs(value) > 1e15) return value > 0 ? "∞" : "-∞";
    let format = numberFormats.get(digits);
    if (!format) {
      format = new Intl.NumberFormat("en-US", { maximumFractionDigits: digits });
      numberFormats.set(digits, format);
    }
    return format.format(value);
  }

  function fmtPercent(value) {
    if (value === null || value === undefined) return "–";
    return `${fmtNum(value, value < 10 ? 1 : 0)} %`;
  }

  function fmtBytes(bytes) {
    if (bytes === null || bytes === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${fmtNum(value, unit ? 1 : 0)} ${units[unit]}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return `${fmtNum(seconds * 1000, 0)} ms`;
    if (seconds < 120) return `${fmtNum(seconds, 1)} s`;
    if (seconds < 7200) return `${fmtNum(seconds / 60, 1)} min`;
    if (seconds < 172800) return `${fmtNum(seconds / 3600, 1)} h`;
    return `${fmtNum(seconds / 86400, 1)} days`;
  }

  function fmtClock(epochSeconds) {
    const date = new Date(epochSeconds * 1000);
    const clock = date.toLocaleTimeString("en-GB", { hour12: false });
    return Date.now() - date.getTime() > 86400000 ? `${date.toLocaleDateString("en-CA")} ${clock}` : clock;
  }

  function fmtTimestamp(iso) {
    if (!iso) return "–";
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? String(iso) : fmtClock(ms / 1000);
  }

  function signalName(dominant) {
    const found = SIGNALS.find(([, id]) => id === dominant);
    return found ? found[2].toLowerCase() : String(dominant || "–");
  }

  /** Text for a value of unknown shape (fields a later release adds): scalars, or `key: value` pairs. */
  function describe(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return fmtNum(value, 2);
    if (typeof value !== "object") return String(value);
    if (Array.isArray(value)) return value.map(describe).join(", ");
    return Object.entries(value)
      .filter(([, v]) => v === null || typeof v !== "object")
      .map(([k, v]) => `${k}: ${describe(v)}`)
      .join(", ");
  }

  // -- talking to the API ---------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, body, fallback) {
      const error = body && body.error;
      super(error && error.message ? error.message : fallback || `HTTP ${status}`);
      this.status = status;
      this.code = error ? error.code : null;
    }
  }

  class Cancelled extends Error {}

  async function getJSON(path) {
    const response = await fetch(path, {
      headers: { Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || body.success !== true) throw new ApiFailure(response.status, body);
    return body.data;
  }

  let memoryToken = null;

  function savedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function saveToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled: the token lives only in this call */
    }
    memoryToken = token || null;
    setText($("token-button"), token ? "Admin token (set)…" : "Admin token…");
  }

  /** A change through the API: Authorization from the tab's token; on 401, ask for one and retry. */
  async function mutate(method, path, body) {
    for (let attempt = 0; attempt < 4; attempt += 1) {
      const token = savedToken() || memoryToken;
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (token) headers.Authorization = `Bearer ${token}`;
      let response;
      try {
        response = await fetch(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
          credentials: "omit",
        });
      } catch {
        throw new Error("the admin API cannot be reached");
      }
      const json = await response.json().catch(() => null);
      if (response.ok && json && json.success === true) return json.data;
      if (response.status === 401) {
        const reason = token
          ? "The sidecar refused this token. Enter its admin token to make changes."
          : "This sidecar has an admin token: enter it to make changes.";
        if (!(await askToken(reason))) throw new Cancelled("cancelled");
        continue;
      }
      throw new ApiFailure(response.status, json);
    }
    throw new Error("the token was refused");
  }

  // -- dialogs and messages -------------------------------------------------------------------------
  let tokenResolve = null;

  function askToken(reason) {
    const dialog = $("token-dialog");
    setText($("token-reason"), reason);
    $("token-input").value = "";
    if (!dialog.open) dialog.showModal();
    $("token-input").focus();
    return new Promise((resolve) => {
      if (tokenResolve) tokenResolve(false);
      tokenResolve = resolve;
    });
  }

  function closeTokenDialog(result) {
    const dialog = $("token-dialog");
    if (dialog.open) dialog.close();
    if (tokenResolve) {
      const resolve = tokenResolve;
      tokenResolve = null;
      resolve(result);
    }
  }

  function confirmChange(text, body) {
    const dialog = $("confirm-dialog");
    setText($("confirm-text"), text);
    setText($("confirm-body"), JSON.stringify(body, null, 2));
    dialog.showModal();
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-yes").removeEventListener("click", yes);
        $("confirm-no").removeEventListener("click", no);
        dialog.removeEventListener("close", closed);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const yes = () => done(true);
      const no = () => done(false);
      const closed = () => done(false);
      $("confirm-yes").addEventListener("click", yes);
      $("confirm-no").addEventListener("click", no);
      dialog.addEventListener("close", closed);
    });
  }

  let toastTimer = null;
  function toast(message, kind = "info") {
    const node = $("toast");
    node.dataset.kind = kind;
    setText(node, message);
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      node.hidden = true;
    }, kind === "error" ? 9000 : 5000);
  }

  async function runAction(button, label, action) {
    button.disabled = true;
    try {
      const message = await action();
      if (message) toast(message);
    } catch (err) {
      if (!(err instanceof Cancelled)) toast(`${label} failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- polling --------------------------------------------------------------------------------------
  function poll(name, every, run) {
    const poller = { timer: null, running: false, again: false };
    async function tick() {
      clearTimeout(poller.timer);
      poller.timer = null;
      if (poller.running) {
        poller.again = true;
        return;
      }
      if (!state.paused && !document.hidden) {
        poller.running = true;
        try {
          await run();
        } catch (err) {
          if (name === "status") connectionLost(err);
        } finally {
          poller.running = false;
        }
      }
      if (poller.again) {
        poller.again = false;
        tick();
        return;
      }
      poller.timer = setTimeout(tick, every());
    }
    poller.now = tick;
    state.pollers[name] = poller;
    tick();
  }

  function refresh(...names) {
    for (const name of names) if (state.pollers[name]) state.pollers[name].now();
  }

  function connectionLost(err) {
    const node = $("connection");
    node.dataset.state = "lost";
    const since = state.lastOk ? ` (last update ${fmtClock(state.lastOk / 1000)})` : "";
    setText(node, `Admin API unreachable: ${err.message}${since}. Retrying…`);
  }

  function connectionOk() {
    state.lastOk = Date.now();
    const node = $("connection");
    if (state.paused) return;
    node.dataset.state = "live";
    setText(node, `Live · updated ${fmtClock(state.lastOk / 1000)}`);
  }

  // -- status ---------------------------------------------------------------------------------------
  function renderStatus(status) {
    state.status = status;
    const level = LEVELS.includes(status.degradationLevel) ? status.degradationLevel : "unknown";
    const card = $("level-card");
    card.dataset.level = level;
    setText($("level"), status.degradationLevel);
    const value = status.degradationLevelValue;
    setText($("level-value"), `level ${value} of 4`);
    for (const item of $("level-scale").children) {
      const step = Number(item.dataset.step);
      item.classList.toggle("reached", step <= value);
      item.classList.toggle("current", step === value);
      if (step === value) item.setAttribute("aria-current", "step");
      else item.removeAttribute("aria-current");
    }
    const load = fmtPercent(status.loadPercent);
    let why =
      value === 0
        ? `Load ${load} of threshold (highest: ${signalName(status.dominantSignal)}): no degradation.`
        : `Load ${load} of threshold, driven by ${signalName(status.dominantSignal)}. ` +
          (value >= 3
            ? `Low-priority data is dropped; sampling keeps ${fmtPercent(status.samplingRate * 100)} of medium data`
            : `Sampling keeps ${fmtPercent(status.samplingRate * 100)} of medium and low data`) +
          (value === 4 ? "; breakers open on heavy-hitter subjects" : "") +
          `; batch size ${fmtNum(status.batchSize)}. Replies, JetStream acks and requests are never sampled.`;
    if (!status.upstreamConnected) why += " The upstream NATS connection is down: messages wait in the queue.";
    else if (status.upstreamStalled) why += " The upstream socket is backed up (stalled).";
    setText($("level-why"), why);

    const forecast = $("forecast");
    const explained = signalsSentence(status);
    if (explained) {
      forecast.hidden = false;
      setText(forecast, explained);
    } else if (status.forecast !== undefined && status.forecast !== null) {
      forecast.hidden = false;
      setText(forecast, `Forecast: ${describe(status.forecast)}`);
    } else forecast.hidden = true;

    renderSignals(status);
    renderFacts(status);
    const reasons = Object.entries(status.droppedByReason || {}).filter(([, n]) => n > 0);
    setText(
      $("dropped-reasons"),
      reasons.length
        ? `Dropped since start, by reason: ${reasons.map(([r, n]) => `${r} ${fmtNum(n)}`).join(", ")}.`
        : "Nothing dropped since start.",
    );
  }

  // What the upstream RTT, the queue forecast and the JetStream streams say (docs/signals.md); empty when
  // they say nothing worth a line.
  function signalsSentence(status) {
    const detail = status.signalDetail;
    if (!detail) return "";
    const parts = [];
    const ping = (detail.rtt || {}).ping || {};
    if (ping.rttMs !== null && ping.rttMs !== undefined && ping.baselineMs !== null && ping.baselineMs !== undefined) {
      parts.push(`Upstream RTT ${fmtNum(ping.rttMs, 2)} ms (baseline ${fmtNum(ping.baselineMs, 2)} ms)`);
    }
    if (detail.queueDelayMs > 0) parts.push(`oldest queued message waiting ${fmtNum(detail.queueDelayMs, 0)} ms`);
    const queue = detail.queueForecast || {};
    if (queue.secondsToFull !== null && queue.secondsToFull !== undefined) {
      parts.push(`queue full in ~${fmtNum(queue.secondsToFull, 0)} s at the current trend`);
    }
    const spool = detail.spoolForecast || {};
    if (spool.secondsToFull !== null && spool.secondsToFull !== undefined) {
      parts.push(`spool full in ~${fmtNum(spool.secondsToFull, 0)} s at the current trend`);
    }
    for (const stream of detail.streams || []) {
      const level = (detail.classLevels || {})[stream.priority] || "none";
      const state = stream.refusingNew ? "full, refusing new messages" : `${fmtPercent(stream.fill * 100)} full`;
      parts.push(`stream ${stream.name} ${state} (${stream.priority} messages at level ${level})`);
    }
    return parts.length ? `Signals: ${parts.join("; ")}.` : "";
  }

  function renderSignals(status) {
    const list = $("signals");
    if (!list.children.length) {
      for (const [key, , label] of SIGNALS) {
        list.append(
          el(
            "li",
            { class: "signal", "data-signal": key },
            el("span", { class: "name", text: label }),
            el(
              "span",
              { class: "bar", role: "meter", "aria-label": `${label} load`, "aria-valuemin": 0, "aria-valuemax": 100 },
              el("span", { class: "fill" }),
            ),
            el("span", { class: "value" }),
          ),
        );
      }
    }
    for (const item of list.children) {
      const key = item.dataset.signal;
      const signal = SIGNALS.find(([k]) => k === key);
      const percent = (status.signals || {})[key] ?? 0;
      const dominant = status.dominantSignal === signal[1];
      item.classList.toggle("dominant", dominant);
      item.classList.toggle("over", percent >= 100);
      const bar = item.querySelector(".bar");
      bar.setAttribute("aria-valuenow", String(Math.round(Math.min(percent, 1e6))));
      bar.setAttribute("aria-valuetext", `${fmtPercent(percent)} of threshold${dominant ? ", dominant" : ""}`);
      item.querySelector(".fill").style.width = `${Math.max(0, Math.min(100, percent))}%`;
      setText(item.querySelector(".value"), `${fmtPercent(percent)}${dominant ? " ◆" : ""}`);
      setText(item.querySelector(".name"), signal[2] + (dominant ? " (dominant)" : ""));
    }
  }

  function renderFacts(status) {
    const upstream = !status.upstreamConnected
      ? ["disconnected", "state-bad"]
      : status.upstreamStalled
        ? ["connected, stalled", "state-warning"]
        : ["connected", "state-ok"];
    const queuePercent = status.maxQueueSize ? (status.currentQueueSize / status.maxQueueSize) * 100 : 0;
    const facts = [
      ["Upstream", upstream[0], upstream[1]],
      ["Incoming", `${fmtNum(status.currentPublishRate, 1)} msg/s`],
      [
        "Queue",
        `${fmtNum(status.currentQueueSize)} / ${fmtNum(status.maxQueueSize)} (${fmtPercent(queuePercent)}), ` +
          `${fmtBytes(status.queuedBytes)}, oldest ${fmtDuration(status.oldestQueuedAgeSeconds)}`,
      ],
      ["Spool", `${fmtNum(status.spoolMessages)} messages, ${fmtBytes(status.spoolBytes)}`],
      [
        "Messages",
        `received ${fmtNum(status.receivedMessages)}, forwarded ${fmtNum(status.forwardedMessages)}, ` +
          `dropped ${fmtNum(status.droppedMessages)} (sampled out ${fmtNum(status.sampledMessages)})`,
      ],
      [
        "Breakers",
        status.openCircuitBreakers ? `${fmtNum(status.openCircuitBreakers)} open or half-open` : "all closed",
        status.openCircuitBreakers ? "state-warning" : null,
      ],
      ["Resources", `memory ${fmtNum(status.currentMemoryMB, 1)} MB, CPU ${fmtPercent(status.currentCpuPercent)}`],
      [
        "Clients",
        `${fmtNum(status.clients)}` +
          (status.flowPausedClients ? `, ${fmtNum(status.flowPausedClients)} paused by flow control` : ""),
      ],
      ["Uptime", fmtDuration(status.uptimeSeconds)],
    ];
    const list = $("facts");
    if (list.children.length !== facts.length * 2) {
      list.replaceChildren(...facts.flatMap(([name]) => [el("dt", { text: name }), el("dd")]));
    }
    facts.forEach(([, text, cls], i) => {
      const dd = list.children[i * 2 + 1];
      setText(dd, text);
      dd.className = cls || "";
    });
  }

  function renderHealth(health) {
    const parts = Object.entries(health.components || {})
      .filter(([, c]) => c && c.status && c.status !== "ok")
      .map(([name, c]) => `${name} ${c.status}`);
    const node = $("health");
    node.className = `health state-${health.status === "healthy" ? "ok" : health.status === "critical" ? "critical" : "warning"}`;
    const detail = parts.length
      ? parts.join(", ")
      : health.status === "healthy"
        ? "every component ok"
        : `from the level ${health.degradationLevel}; every component ok`;
    setText(node, `Health: ${health.status} (${detail})`);
  }

  /** GET /fleet: the members this sidecar sees, their state and shares (hidden without `fleet:`). */
  function renderFleet(fleet) {
    const section = $("fleet-section");
    if (!fleet || !fleet.enabled) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    const levels = fleet.levels || { max: 0, median: 0 };
    const budget =
      fleet.budget === null || fleet.budget === undefined
        ? "no budget (view only)"
        : `budget ${fmtNum(fleet.budget)} msg/s (${fleet.shareMode})`;
    const parts = [
      `${fleet.name} in bucket ${fleet.bucket}, ${fleet.members.length} live member(s)`,
      budget,
      `mode ${fleet.mode}`,
      `ceiling here ${fmtNum(fleet.rateCeiling, 1)} msg/s`,
      `fleet level: worst ${LEVELS[levels.max] || levels.max}, median ${LEVELS[levels.median] || levels.median}`,
    ];
    const nodes = [el("p", { id: "fleet-summary", text: parts.join(" · ") })];
    if (!fleet.kvAvailable) {
      const hold =
        fleet.holdRemainingSeconds === null || fleet.holdRemainingSeconds === undefined
          ? ""
          : ` (last share held ${fmtNum(fleet.holdRemainingSeconds)} s more)`;
      nodes.push(el("p", { class: "hint", text: `KV unavailable: ${fleet.kvError || "no answer yet"}${hold}` }));
    }
    const columns = [
      ["Member", (m) => m.id + (m.own ? " (this sidecar)" : "")],
      ["Host", (m) => m.host],
      ["Level", (m) => m.level],
      ["Load", (m) => fmtPercent(m.loadPercent)],
      ["Offered msg/s", (m) => fmtNum(m.offeredRate, 1)],
      ["Forwarded msg/s", (m) => fmtNum(m.forwardedRate, 1)],
      ["Share msg/s", (m) => (m.share === null ? "–" : fmtNum(m.share, 1))],
      ["Queue", (m) => fmtNum(m.queue)],
      ["Spool", (m) => fmtNum(m.spool)],
      ["Seen", (m) => `${fmtNum(m.lastSeenSecondsAgo, 1)} s ago`],
    ];
    nodes.push(
      el(
        "table",
        { class: "records", id: "fleet-table" },
        el("thead", {}, el("tr", {}, ...columns.map(([c]) => el("th", { scope: "col", text: c })))),
        el(
          "tbody",
          {},
          ...fleet.members.map((m) => el("tr", {}, ...columns.map(([, f]) => el("td", { text: describe(f(m)) })))),
        ),
      ),
    );
    $("fleet").replaceChildren(...nodes);
  }

  // -- plots ----------------------------------------------------------------------------------------
  function series(label, i, unit, scale = "y", digits = 1, extra = {}) {
    return {
      label,
      scale,
      stroke: COLOURS[i % COLOURS.length],
      width: 2,
      dash: DASHES[i % DASHES.length] || undefined,
      value: (u, v) => (v === null || v === undefined ? "–" : `${fmtNum(v, digits)}${unit}`),
      points: { show: false },
      ...extra,
    };
  }

  const AXIS = { stroke: "#4b5563", grid: { stroke: "#e5e7eb", width: 1 }, ticks: { stroke: "#d0d7de" } };

  function axis(extra) {
    return { ...AXIS, ...extra };
  }

  function numberAxis(scale, label, side = 3, extra = {}) {
    return axis({
      scale,
      side,
      label,
      labelSize: 18,
      size: 56,
      values: (u, splits) => splits.map((v) => (Math.abs(v) >= 10000 ? `${fmtNum(v / 1000, 0)}k` : fmtNum(v, 1))),
      grid: side === 1 ? { show: false } : AXIS.grid,
      ...extra,
    });
  }

  const PLOTS = {
    "plot-load": {
      build: () => ({
        series: [
          series("load", 0, " %", "y", 0),
          series("level", 2, "", "level", 0, {
            paths: uPlot.paths.stepped({ align: 1 }),
            value: (u, v) => (v === null || v === undefined ? "–" : LEVELS[Math.round(v)] ?? String(v)),
          }),
        ],
        axes: [
          numberAxis("y", "% of threshold"),
          numberAxis("level", "level", 1, {
            size: 64,
            splits: () => [0, 1, 2, 3, 4],
            values: (u, splits) => splits.map((v) => LEVELS[v] ?? ""),
          }),
        ],
        scales: {
          y: { range: (u, min, max) => [0, Math.max(110, (max || 0) * 1.1)] },
          level: { range: [-0.2, 4.3] },
        },
      }),
      data: (h) => [h.x, h.col("loadPercent"), h.col("degradationLevelValue")],
    },
    "plot-rates": {
      build: (h) => ({
        series: [
          series("received", 0, "/s"),
          series("forwarded", 1, "/s"),
          series("dropped", 2, "/s"),
          ...h.reasons.map((reason, i) => series(`dropped: ${reason}`, i + 3, "/s")),
        ],
        axes: [numberAxis("y", "messages / s")],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.1)] } },
      }),
      key: (h) => h.reasons.join("|"),
      data: (h) => [
        h.x,
        h.rate("receivedMessages"),
        h.rate("forwardedMessages"),
        h.rate("droppedMessages"),
        ...h.reasons.map((reason) => h.reasonRate(reason)),
      ],
    },
    "plot-queue": {
      build: () => ({
        series: [
          series("queue", 0, "", "y", 0),
          series("queue limit", 6, "", "y", 0, { width: 1, dash: [4, 4] }),
          series("spooled", 2, "", "y", 0),
        ],
        axes: [numberAxis("y", "messages")],
        scales: { y: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.05)] } },
      }),
      data: (h) => [h.x, h.col("currentQueueSize"), h.x.map(() => h.maxQueueSize), h.col("spooledMessages")],
    },
    "plot-resources": {
      build: () => ({
        series: [series("memory", 0, " MB", "mb", 1), series("CPU", 2, " %", "cpu", 1)],
        axes: [numberAxis("mb", "MB"), numberAxis("cpu", "% CPU", 1)],
        scales: {
          mb: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.15)] },
          cpu: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.15)] },
        },
      }),
      data: (h) => [h.x, h.col("currentMemoryMB"), h.col("currentCpuPercent")],
    },
  };

  /** Columns of the history: x in epoch seconds, plain fields, rates from the counters. */
  function historyView(data) {
    const points = data.history || [];
    const x = points.map((p) => Date.parse(p.timestamp) / 1000);
    const reasons = [];
    for (const p of points) {
      for (const reason of Object.keys(p.droppedByReason || {})) if (!reasons.includes(reason)) reasons.push(reason);
    }
    reasons.sort();
    const perSecond = (values) =>
      values.map((v, i) => {
        if (i === 0 || v === null || values[i - 1] === null) return null;
        const dt = x[i] - x[i - 1];
        const dv = v - values[i - 1];
        return dt > 0 && dv >= 0 ? dv / dt : null;
      });
    return {
      x,
      reasons,
      maxQueueSize: (data.current || {}).maxQueueSize ?? null,
      col: (name) => points.map((p) => (typeof p[name] === "number" ? p[name] : null)),
      rate: (name) => perSecond(points.map((p) => (typeof p[name] === "number" ? p[name] : null))),
      reasonRate: (reason) =>
        perSecond(points.map((p) => (p.droppedByReason ? (p.droppedByReason[reason] ?? 0) : null))),
    };
  }

  /** Time-axis labels on the 24-hour clock, as everywhere on the page: seconds only on short spans. */
  function timeTicks(u, splits) {
    const span = (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
    const options = span > 600 ? { hour: "2-digit", minute: "2-digit", hour12: false } : { hour12: false };
    return splits.map((v) => new Date(v * 1000).toLocaleTimeString("en-GB", options));
  }

  function showLatest(plot) {
    const last = plot.data[0].length - 1;
    if (plot.cursor.idx === null || plot.cursor.idx === undefined || plot.cursor.left < 0) {
      if (last >= 0) plot.setLegend({ idx: last });
    }
  }

  function plotWidth(area) {
    return Math.max(160, Math.floor(area.clientWidth));
  }

  /** The history of the selected range: whole at first and once a minute, else only the new points. */
  async function fetchHistory() {
    const range = state.range;
    const known = state.history;
    const points = known && known.timeRange === range ? known.history : null;
    const whole = !points || !points.length || Date.now() - state.historyFetchedAt > FULL_HISTORY_EVERY_MS;
    const since = whole ? "" : `&since=${encodeURIComponent(points[points.length - 1].timestamp)}`;
    const data = await getJSON(`${API}/metrics?timeRange=${encodeURIComponent(range)}${since}`);
    if (whole) {
      state.historyFetchedAt = Date.now();
      return data;
    }
    const step = data.stepSeconds || 1;
    const bucket = (p) => Math.floor(Date.parse(p.timestamp) / 1000 / step);
    for (const point of data.history) {
      // A point of the step the last one is in replaces it: that step was still growing.
      if (points.length && bucket(points[points.length - 1]) === bucket(point)) points[points.length - 1] = point;
      else points.push(point);
    }
    const span = RANGE_SECONDS[range] || 300;
    const newest = Date.parse(points[points.length - 1].timestamp) / 1000;
    while (points.length && Date.parse(points[0].timestamp) / 1000 <= newest - span) points.shift();
    return { ...data, history: points };
  }

  function renderPlots(data) {
    state.history = data;
    const view = historyView(data);
    for (const [id, spec] of Object.entries(PLOTS)) {
      const figure = $(id);
      const area = figure.querySelector(".plot-area");
      const key = spec.key ? spec.key(view) : "";
      let entry = state.plots[id];
      if (!entry || entry.key !== key) {
        if (entry) entry.plot.destroy();
        const built = spec.build(view);
        const plot = new uPlot(
          {
            width: plotWidth(area),
            height: PLOT_HEIGHT,
            series: [{ label: "time", value: (u, v) => (v === null || v === undefined ? "–" : fmtClock(v)) }, ...built.series],
            axes: [axis({ space: 80, size: 36, values: timeTicks }), ...built.axes],
            scales: { x: { time: true }, ...built.scales },
            legend: { live: true },
            cursor: { drag: { x: false, y: false } },
            hooks: {
              // Without a cursor on the plot the legend shows the latest values, not dashes.
              setCursor: [showLatest],
              draw: [
                () => {
                  figure.dataset.draws = String(Number(figure.dataset.draws || 0) + 1);
                },
              ],
            },
          },
          spec.data(view),
          area,
        );
        entry = { plot, key };
        state.plots[id] = entry;
      } else {
        entry.plot.setData(spec.data(view));
      }
      showLatest(entry.plot);
      figure.dataset.points = String(view.x.length);
    }
  }

  function resizePlots() {
    for (const [id, entry] of Object.entries(state.plots)) {
      const area = $(id).querySelector(".plot-area");
      const width = plotWidth(area);
      if (entry.plot.width !== width) entry.plot.setSize({ width, height: PLOT_HEIGHT });
    }
  }

  // -- breakers -------------------------------------------------------------------------------------
  /** Keep `container`'s children in step with `items`, by key, updating nodes in place. */
  function reconcile(container, items, keyOf, create, update) {
    const existing = new Map();
    for (const node of [...container.children]) {
      if (node.dataset.key !== undefined) existing.set(node.dataset.key, node);
      else node.remove();
    }
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      const wanted = previous ? previous.nextSibling : container.firstChild;
      if (node !== wanted) container.insertBefore(node, wanted);
      previous = node;
    }
    for (const node of existing.values()) node.remove();
  }

  async function breakerAction(subject, action) {
    const data = await mutate("POST", `${API}/circuit-breaker`, { subject, action });
    refresh("breakers", "status");
    const what = { open: "opened", close: "closed", reset: "reset" }[action];
    return data.changed ? `Breaker ${subject} ${what} (now ${data.state}).` : `Breaker ${subject}: nothing to do (${data.state}).`;
  }

  function renderBreakers(data) {
    state.breakers = data.breakers;
    const order = { open: 0, half_open: 1, closed: 2 };
    const breakers = [...data.breakers].sort(
      (a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || a.subject.localeCompare(b.subject),
    );
    setText(
      $("breakers-summary"),
      `${data.enabled ? "Automatic breakers on" : "Automatic breakers off (enableCircuitBreaker: false)"}; ` +
        `${fmtNum(data.open)} open, ${fmtNum(data.halfOpen)} half-open, ${fmtNum(data.breakers.length)} listed.`,
    );
    const body = $("breakers");
    if (!breakers.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colSpan: 7, text: "No breaker is open or remembers failures." })));
      return;
    }
    reconcile(
      body,
      breakers,
      (b) => b.subject,
      (b) => {
        const close = el("button", { type: "button", text: "Close", "data-action": "close", "aria-label": `Close breaker ${b.subject}` });
        const reset = el("button", { type: "button", text: "Reset", "data-action": "reset", "aria-label": `Reset breaker ${b.subject}` });
        close.addEventListener("click", () => runAction(close, "Closing the breaker", () => breakerAction(b.subject, "close")));
        reset.addEventListener("click", () => runAction(reset, "Resetting the breaker", () => breakerAction(b.subject, "reset")));
        return el(
          "tr",
          { "data-subject": b.subject },
          el("td", { class: "subject", "data-label": "Subject", text: b.subject }),
          el("td", { "data-label": "State" }, el("span", { class: "state-pill" })),
          el("td", { class: "reason", "data-label": "Reason" }),
          el("td", { class: "opened", "data-label": "Opened" }),
          el("td", { class: "failures", "data-label": "Failures" }),
          el("td", { class: "next", "data-label": "Next trial" }),
          el("td", { class: "actions", "data-label": "Actions" }, close, reset),
        );
      },
      (row, b) => {
        const pill = row.querySelector(".state-pill");
        pill.className = `state-pill ${b.state}`;
        setText(pill, b.state.replace("_", "-"));
        row.dataset.state = b.state;
        setText(row.querySelector(".reason"), b.reason ? b.reason.replace("_", " ") : "–");
        setText(row.querySelector(".opened"), fmtTimestamp(b.openedAt));
        setText(row.querySelector(".failures"), fmtNum(b.failures));
        setText(
          row.querySelector(".next"),
          b.nextAttemptAt ? `${fmtTimestamp(b.nextAttemptAt)} (backoff ${fmtDuration(b.backoffMs / 1000)})` : "–",
        );
        row.querySelector('[data-action="close"]').disabled = b.state === "closed";
      },
    );
  }

  // -- recommendations, history, load test ----------------------------------------------------------
  function renderRecommendations(data) {
    const found = data.recommendations || [];
    setText(
      $("recommendations-summary"),
      found.length
        ? `${found.length} from the last ${fmtDuration(data.windowSeconds)} (${fmtNum(data.samples)} samples). ` +
            "Applying one sends its change with PUT /config; POST /config/reset returns to the file."
        : `Nothing to recommend from the last ${fmtDuration(data.windowSeconds)} (${fmtNum(data.samples)} samples).`,
    );
    reconcile(
      $("recommendations"),
      found,
      (r) => r.id,
      (r) => {
        const apply = el("button", { type: "button", class: "primary", text: "Apply this change", "data-action": "apply" });
        apply.addEventListener("click", () =>
          runAction(apply, "Applying the recommendation", async () => {
            const current = (state.recommendations || {})[r.id] || r;
            const ok = await confirmChange(`${current.title}: send this change to PUT /config?`, current.suggestedConfig);
            if (!ok) return null;
            const result = await mutate("PUT", `${API}/config`, current.suggestedConfig);
            refresh("recommendations");
            return result.changed.length ? `Configuration changed: ${result.changed.join(", ")}.` : "The configuration already had these values.";
          }),
        );
        return el(
          "article",
          { class: "recommendation", "data-id": r.id },
          el("h3", {}, el("span", { class: "severity" }), el("span", { class: "title" })),
          el("p", { class: "description" }),
          el("p", { class: "hint", text: "Proposed change (body of PUT /api/backpressure/config):" }),
          el("pre", { class: "change" }),
          el("details", {}, el("summary", { text: "Evidence" }), el("pre", { class: "evidence" })),
          apply,
        );
      },
      (node, r) => {
        node.dataset.severity = r.severity;
        setText(node.querySelector(".severity"), r.severity);
        setText(node.querySelector(".title"), r.title);
        setText(node.querySelector(".description"), r.description);
        setText(node.querySelector(".change"), JSON.stringify(r.suggestedConfig));
        setText(node.querySelector(".evidence"), JSON.stringify(r.evidence, null, 1));
        node.querySelector('[data-action="apply"]').setAttribute("aria-label", `Apply recommendation: ${r.title}`);
      },
    );
    state.recommendations = Object.fromEntries(found.map((r) => [r.id, r]));
  }

  function renderTransitions(data) {
    const transitions = data.transitions || [];
    setText(
      $("history-summary"),
      transitions.length
        ? `${fmtNum(data.count)} level changes since start (newest first); now ${data.currentLevel}.`
        : `No level change since start; now ${data.currentLevel}.`,
    );
    const last = transitions.length ? transitions[transitions.length - 1].timestamp : "";
    const body = $("transitions");
    if (body.dataset.last === last && body.children.length) return;
    body.dataset.last = last;
    if (!transitions.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colSpan: 5, text: "None yet." })));
      return;
    }
    body.replaceChildren(
      ...transitions
        .slice(-100)
        .reverse()
        .map((t) =>
          el(
            "tr",
            {},
            el("td", { "data-label": "Time", text: fmtTimestamp(t.timestamp) }),
            el("td", { "data-label": "From", text: t.from }),
            el("td", { "data-label": "To", text: `${t.to} ${t.toValue > t.fromValue ? "▲ worse" : "▼ better"}` }),
            el("td", { "data-label": "Load", text: fmtPercent(t.loadPercent) }),
            el("td", { "data-label": "Dominant signal", text: signalName(t.dominantSignal) }),
          ),
        ),
    );
  }

  function renderLoadTest(run) {
    const facts = [];
    if (!run.id) facts.push(["State", "no load test has run since the sidecar started"]);
    else {
      const spec = run.spec || {};
      facts.push(
        ["State", `${run.state}${run.running ? ` (${fmtPercent(run.progress)})` : ""}`],
        ["Plan", `${fmtNum(spec.messagesPerSecond)} msg/s for ${fmtDuration(spec.durationSeconds)}, ${fmtBytes(spec.messageSize)} each, on ${(spec.subjects || []).join(", ")}`],
        ["Sent", `${fmtNum(run.sent)} of ${fmtNum(run.plannedMessages)} at ${fmtNum(run.actualRate, 1)} msg/s`],
        [
          "Delivered",
          run.measured
            ? `${fmtNum(run.forwarded)} back from NATS (${fmtPercent(run.successRate)})`
            : `not measured: ${run.measurementError || "unknown"}`,
        ],
        ["Dropped", `${fmtNum(run.dropped)}${describe(run.droppedByReason) ? ` (${describe(run.droppedByReason)})` : ""}`],
      );
      if (run.latencyMs) {
        const l = run.latencyMs;
        facts.push(["Latency", `p50 ${fmtNum(l.p50, 2)} ms, p95 ${fmtNum(l.p95, 2)} ms, p99 ${fmtNum(l.p99, 2)} ms, max ${fmtNum(l.max, 1)} ms`]);
      }
    }
    $("loadtest").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    $("loadtest-stop").hidden = !run.running;
  }

  // -- wiring ---------------------------------------------------------------------------------------
  function wire() {
    const token = savedToken();
    saveToken(token);
    $("range").addEventListener("change", (event) => {
      state.range = event.target.value;
      refresh("history");
    });
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      const button = $("pause");
      button.setAttribute("aria-pressed", String(state.paused));
      setText(button, state.paused ? "Resume updates" : "Pause updates");
      const node = $("connection");
      if (state.paused) {
        node.dataset.state = "paused";
        setText(node, "Updates paused");
      } else refresh("status", "history", "breakers", "transitions", "recommendations", "loadtest", "health");
    });
    $("token-button").addEventListener("click", () => {
      askToken("Changes from this page send this token; reads need none.");
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      saveToken(value || null);
      closeTokenDialog(Boolean(value));
    });
    $("token-forget").addEventListener("click", () => {
      saveToken(null);
      closeTokenDialog(false);
      toast("Token forgotten.");
    });
    $("token-cancel").addEventListener("click", () => closeTokenDialog(false));
    $("token-dialog").addEventListener("close", () => closeTokenDialog(false));
    $("open-breaker").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("open-subject");
      const subject = input.value.trim();
      if (!subject) return;
      const button = event.target.querySelector("button");
      runAction(button, "Opening the breaker", async () => {
        const message = await breakerAction(subject, "open");
        input.value = "";
        return message;
      });
    });
    $("loadtest-stop").addEventListener("click", (event) =>
      runAction(event.target, "Stopping the load test", async () => {
        await mutate("POST", `${API}/load-test/stop`);
        refresh("loadtest");
        return "Load test stopped.";
      }),
    );
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh("status", "history", "breakers");
    });
    if ("ResizeObserver" in window) {
      const observer = new ResizeObserver(() => resizePlots());
      for (const id of Object.keys(PLOTS)) observer.observe($(id).querySelector(".plot-area"));
    } else window.addEventListener("resize", resizePlots);

    poll("status", () => 1000, async () => {
      renderStatus(await getJSON(`${API}/status`));
      connectionOk();
    });
    poll("history", () => HISTORY_EVERY_MS[state.range] || 2000, async () => renderPlots(await fetchHistory()));
    poll("breakers", () => 2000, async () => renderBreakers(await getJSON(`${API}/circuit-breaker/status`)));
    poll("transitions", () => 5000, async () => renderTransitions(await getJSON(`${API}/analytics/degradation-history`)));
    poll("recommendations", () => 5000, async () => renderRecommendations(await getJSON(`${API}/analytics/recommendations`)));
    poll("loadtest", () => 2000, async () => renderLoadTest(await getJSON(`${API}/load-test/status`)));
    poll("health", () => 5000, async () => renderHealth(await getJSON(`${API}/health/detailed`)));
    poll("fleet", () => 2000, async () => renderFleet(await getJSON(`${API}/fleet`)));
  }

  if (typeof uPlot === "undefined") {
    document.addEventListener("DOMContentLoaded", () => {
      setText($("connection"), "The chart library did not load (ui/vendor/uPlot.iife.min.js).");
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
