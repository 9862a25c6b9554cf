// lib_mlx chat page: plain JavaScript, no build step, no third-party code.
//
// Talks only to the server that served it (relative URLs; the page's Content-Security-Policy
// says connect-src 'self'). The API key comes from the URL fragment (#token=...), which
// browsers never send; the page drops it from the address bar at once, keeps it in memory
// only (no storage, no cookies) and sends it as "Authorization: Bearer ..." to /v1/*.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);

  const state = {
    token: null,
    config: null,
    messages: [], // the conversation in the OpenAI chat shape (without the system message)
    files: new Map(), // multipart part name -> File, for messages that reference "attachment:<name>"
    nextFile: 1,
    attachments: [], // {file, kind, url} waiting to be sent with the next message
    controller: null, // AbortController of the stream in flight
    pendingTools: null, // {turn, calls, results} while tool results are awaited
    epoch: 0, // bumped by "New chat": a stream of an older conversation must not write into it
  };

  const ui = {};

  // ---------------------------------------------------------------- token and requests ---
  function takeTokenFromFragment() {
    const hash = window.location.hash.replace(/^#/, "");
    if (!hash) return null;
    const match = hash.match(/(?:^|&)token=([^&]*)/);
    // Drop the fragment from the address bar and history entry: the token lives in memory.
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (_) {
      return match[1];
    }
  }

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    return headers;
  }

  // An error from an HTTP response with an OpenAI error body (or anything else).
  async function httpError(response) {
    let error = {};
    try {
      const body = await response.json();
      error = (body && body.error) || {};
    } catch (_) {
      /* not JSON */
    }
    return {
      status: response.status,
      code: error.code || error.type || "",
      message: error.message || response.statusText || "request failed",
      retryAfter: response.headers.get("Retry-After"),
    };
  }

  // {title, detail} for an error from httpError() (or {status: 0, message} for others).
  function describeError(err) {
    const said = err.message ? `The server said: “${err.message.replace(/\.?$/, ".")}”` : "";
    if (err.status === 401) {
      return {
        title: "Wrong or missing API key (401)",
        detail:
          `${said} Open this page with the URL the server printed (it ends in #token=…), ` +
          "or paste the API key below.",
      };
    }
    if (err.status === 429) {
      const wait = err.retryAfter ? ` Retry in ${err.retryAfter} s.` : "";
      return { title: "The model is busy (429)", detail: `${said}${wait}` };
    }
    if (err.status) {
      const code = err.code ? ` · ${err.code}` : "";
      return { title: `Error ${err.status}${code}`, detail: said };
    }
    return { title: err.title || "Error", detail: err.message || "" };
  }

  function fillMessage(container, { title, detail }) {
    const strong = document.createElement("strong");
    strong.textContent = title;
    const span = document.createElement("span");
    span.textContent = detail ? ` ${detail}` : "";
    container.replaceChildren(strong, span);
  }

  function showBanner(message, { askToken = false } = {}) {
    fillMessage($(".banner-text", ui.banner), message);
    ui.banner.hidden = false;
    ui.tokenForm.hidden = !askToken;
    ui.banner.dataset.kind = askToken ? "auth" : "error";
    if (askToken) ui.tokenInput.focus();
  }

  function hideBanner() {
    ui.banner.hidden = true;
  }

  // Server-Sent Events: yields each event's data field (a string).
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data; // comment lines (": keepalive") carry no data
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // ---------------------------------------------------------------------- start-up -------
  async function loadConfig() {
    try {
      const response = await fetch("/page/config.json", { cache: "no-store" });
      if (!response.ok) throw new Error(`page config: HTTP ${response.status}`);
      state.config = await response.json();
    } catch (_) {
      state.config = { model: null, auth: true, media: [], thinking: { supported: true, default: true } };
    }
    const config = state.config;
    if (config.model) ui.model.textContent = config.model;
    const thinking = config.thinking || {};
    ui.thinking.checked = thinking.default !== false;
    ui.thinkingControl.classList.toggle("disabled", thinking.supported === false);
    ui.thinking.disabled = thinking.supported === false;
    if (thinking.supported === false) ui.thinkingControl.title = "This model has no thinking mode";
    const media = config.media || [];
    ui.attach.hidden = media.length === 0;
    ui.file.accept = media.map((kind) => `${kind}/*`).join(",");
  }

  // Checks the key with an authenticated GET /v1/models (so a wrong key shows at once).
  async function checkAccess() {
    if (state.config.auth && !state.token) {
      showBanner(
        {
          title: "This server needs its API key",
          detail: "Open the page with the URL the server printed (it ends in #token=…), or paste the key below.",
        },
        { askToken: true },
      );
      setStatus("no key");
      return false;
    }
    try {
      const response = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) {
        const err = await httpError(response);
        showBanner(describeError(err), { askToken: err.status === 401 });
        setStatus(err.status === 401 ? "unauthorized" : "error");
        return false;
      }
      const body = await response.json();
      const model = body.data && body.data[0];
      if (model && model.id) {
        state.config.model = model.id;
        ui.model.textContent = model.id;
      }
      hideBanner();
      setStatus("ready");
      return true;
    } catch (err) {
      showBanner({ title: "Cannot reach the server", detail: err.message });
      setStatus("offline");
      return false;
    }
  }

  function setStatus(status) {
    document.body.dataset.status = status;
    ui.model.dataset.status = status;
  }

  // -------------------------------------------------------------------- rendering --------
  function scrollToEnd(force = false) {
    const el = document.scrollingElement || document.documentElement;
    const nearEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 160;
    if (force || nearEnd) el.scrollTop = el.scrollHeight;
  }

  function addUserTurn(text, attachments) {
    ui.empty.hidden = true;
    const node = ui.tplUser.content.firstElementChild.cloneNode(true);
    $(".text", node).textContent = text;
    const files = $(".files", node);
    for (const item of attachments) {
      let el;
      if (item.kind === "image") {
        el = document.createElement("img");
        el.src = item.url;
        el.alt = item.file.name;
      } else {
        el = document.createElement("audio");
        el.src = item.url;
        el.controls = true;
      }
      el.className = "file";
      files.append(el);
    }
    ui.messages.append(node);
    scrollToEnd(true);
  }

  class AssistantTurn {
    constructor() {
      this.node = ui.tplAssistant.content.firstElementChild.cloneNode(true);
      this.reasoningBox = $(".reasoning", this.node);
      this.reasoningText = $(".reasoning-text", this.node);
      this.reasoningMeta = $(".reasoning-meta", this.node);
      this.answer = $(".answer", this.node);
      this.toolsBox = $(".tool-calls", this.node);
      this.errorBox = $(".turn-error", this.node);
      this.statsText = $(".stats-text", this.node);
      this.content = "";
      this.reasoning = "";
      this.calls = []; // by index: {id, name, arguments, card}
      this.node.dataset.state = "waiting";
      ui.empty.hidden = true;
      ui.messages.append(this.node);
      scrollToEnd(true);
    }

    addReasoning(text) {
      this.reasoning += text;
      this.reasoningBox.hidden = false;
      this.reasoningText.textContent = this.reasoning;
      this.node.dataset.state = "reasoning";
    }

    addContent(text) {
      this.content += text;
      this.answer.hidden = false;
      this.answer.textContent = this.content;
      this.node.dataset.state = "answering";
    }

    toolDelta(delta) {
      const index = delta.index ?? 0;
      let call = this.calls[index];
      if (!call) {
        const card = ui.tplToolCard.content.firstElementChild.cloneNode(true);
        call = { id: "", name: "", arguments: "", card };
        this.calls[index] = call;
        card.dataset.index = String(index);
        this.toolsBox.append(card);
      }
      if (delta.id) call.id = delta.id;
      const fn = delta.function || {};
      if (fn.name) call.name += fn.name;
      if (fn.arguments) call.arguments += fn.arguments;
      $(".tool-name", call.card).textContent = call.name;
      $(".tool-id", call.card).textContent = call.id;
      $(".tool-args", call.card).textContent = call.arguments;
      this.node.dataset.state = "tool_call";
    }

    // Pretty-print each call's arguments once the stream has ended.
    finishCalls() {
      for (const call of this.calls) {
        if (!call) continue;
        let pretty = call.arguments;
        try {
          pretty = JSON.stringify(JSON.parse(call.arguments || "{}"), null, 2);
          call.card.classList.remove("invalid");
        } catch (_) {
          call.card.classList.add("invalid");
        }
        $(".tool-args", call.card).textContent = pretty;
      }
    }

    showError(message) {
      fillMessage(this.errorBox, message);
      this.errorBox.hidden = false;
    }

    setStats(text) {
      this.statsText.textContent = text;
    }

    finish(kind) {
      this.node.dataset.state = kind; // "done" | "stopped" | "error"
      this.node.classList.add(kind);
    }
  }

  // A live and final metrics line, computed from the stream itself.
  class Meter {
    constructor() {
      this.start = performance.now();
      this.first = null;
      this.last = null;
      this.deltas = 0;
      this.usage = null;
      this.finishReason = null;
    }

    tick() {
      const now = performance.now();
      if (this.first === null) this.first = now;
      this.last = now;
      this.deltas += 1;
    }

    values() {
      const tokens = this.usage ? this.usage.completion_tokens : this.deltas;
      const ttft = this.first === null ? null : this.first - this.start;
      const span = this.first === null ? 0 : (this.last - this.first) / 1000;
      // Decode rate between the first and the last token. When they all arrived at once (a
      // fast model whose chunks share network reads) that span says nothing: use the rate
      // over the whole request instead, a lower bound.
      let tps = null;
      if (tokens > 1 && span >= 0.02) tps = (tokens - 1) / span;
      else if (tokens > 0 && this.last > this.start) tps = tokens / ((this.last - this.start) / 1000);
      const details = (this.usage && this.usage.completion_tokens_details) || {};
      return { tokens, ttft, tps, reasoningTokens: details.reasoning_tokens };
    }

    text(outcome) {
      const v = this.values();
      const parts = [];
      if (outcome) parts.push(outcome);
      parts.push(v.ttft === null ? "no tokens" : `TTFT ${formatMs(v.ttft)}`);
      if (v.tps !== null) parts.push(`${v.tps.toFixed(1)} tok/s`);
      if (v.tokens) {
        const reasoning = v.reasoningTokens ? ` (${v.reasoningTokens} reasoning)` : "";
        parts.push(`${v.tokens} tokens${reasoning}`);
      }
      return parts.join(" · ");
    }

    annotate(node) {
      const v = this.values();
      node.dataset.tokens = String(v.tokens);
      if (v.ttft !== null) node.dataset.ttftMs = v.ttft.toFixed(1);
      if (v.tps !== null) node.dataset.tokensPerSecond = v.tps.toFixed(2);
      if (this.finishReason) node.dataset.finishReason = this.finishReason;
    }
  }

  function formatMs(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  // ------------------------------------------------------------------ the request -------
  function parseTools() {
    const raw = ui.tools.value.trim();
    ui.toolsError.hidden = true;
    if (!raw) return null;
    try {
      const tools = JSON.parse(raw);
      if (!Array.isArray(tools)) throw new Error("expected a JSON array");
      return tools.length ? tools : null;
    } catch (err) {
      ui.toolsError.textContent = `Tools: ${err.message}`;
      ui.toolsError.hidden = false;
      ui.settings.hidden = false;
      ui.settingsToggle.setAttribute("aria-expanded", "true");
      throw err;
    }
  }

  function requestBody(tools) {
    const messages = [];
    const system = ui.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.messages);
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    if (state.config && state.config.model) body.model = state.config.model;
    if (!ui.thinking.disabled) body.thinking = ui.thinking.checked;
    const maxTokens = parseInt(ui.maxTokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const temperature = parseFloat(ui.temperature.value);
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    if (tools) body.tools = tools;
    return body;
  }

  // Names of the file parts the conversation refers to ("attachment:<name>").
  function referencedFiles(messages) {
    const names = new Set();
    for (const message of messages) {
      if (!Array.isArray(message.content)) continue;
      for (const part of message.content) {
        const ref = (part.image_url && part.image_url.url) || (part.input_audio && part.input_audio.data) || "";
        if (ref.startsWith("attachment:")) names.add(ref.slice("attachment:".length));
      }
    }
    return [...names];
  }

  // JSON, or multipart/form-data (a "request" part plus the files) when media is attached.
  function encodeRequest(body) {
    const names = referencedFiles(body.messages);
    if (!names.length) {
      return { headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
    }
    const form = new FormData();
    form.append("request", new Blob([JSON.stringify(body)], { type: "application/json" }));
    for (const name of names) {
      const file = state.files.get(name);
      if (file) form.append(name, file, file.name);
    }
    return { headers: authHeaders(), body: form }; // the browser sets the multipart boundary
  }

  async function runAssistant() {
    let tools;
    try {
      tools = parseTools();
    } catch (_) {
      return;
    }
    const epoch = state.epoch;
    const turn = new AssistantTurn();
    const meter = new Meter();
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let outcome = "done";
    let lastPaint = 0;
    try {
      const request = encodeRequest(requestBody(tools));
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: request.headers,
        body: request.body,
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) {
        const err = await httpError(response);
        turn.showError(describeError(err));
        if (err.status === 401) showBanner(describeError(err), { askToken: true });
        outcome = "error";
      } else {
        let finished = false;
        for await (const data of sseData(response.body)) {
          if (data === "[DONE]") {
            finished = true;
            break;
          }
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch (_) {
            continue;
          }
          if (chunk.error) {
            turn.showError({ title: "Generation failed", detail: chunk.error.message || "" });
            outcome = "error";
            finished = true;
            break;
          }
          if (chunk.usage) meter.usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            const delta = choice.delta || {};
            const reasoning = delta.reasoning_content ?? delta.reasoning;
            if (reasoning) {
              meter.tick();
              turn.addReasoning(reasoning);
            }
            if (delta.content) {
              meter.tick();
              turn.addContent(delta.content);
            }
            for (const call of delta.tool_calls || []) {
              meter.tick();
              turn.toolDelta(call);
            }
            if (choice.finish_reason) meter.finishReason = choice.finish_reason;
          }
          const now = performance.now();
          if (now - lastPaint > 120) {
            lastPaint = now;
            turn.setStats(meter.text("streaming"));
            scrollToEnd();
          }
        }
        if (!finished) {
          turn.showError({ title: "The stream ended early", detail: "The server closed the connection before the end." });
          outcome = "error";
        }
      }
    } catch (err) {
      if (err.name === "AbortError") {
        outcome = "stopped";
      } else {
        turn.showError({ title: "Connection failed", detail: err.message });
        outcome = "error";
      }
    } finally {
      if (state.controller === controller) state.controller = null;
      setBusy(state.controller !== null);
    }
    if (epoch !== state.epoch) return; // "New chat" was pressed meanwhile

    turn.finishCalls();
    meter.annotate(turn.node);
    const reason = meter.finishReason && meter.finishReason !== "stop" ? `finish: ${meter.finishReason}` : null;
    turn.setStats(meter.text(outcome === "done" ? reason : outcome));
    const reasoningTokens = meter.values().reasoningTokens;
    if (turn.reasoning && reasoningTokens) turn.reasoningMeta.textContent = ` · ${reasoningTokens} tokens`;
    turn.finish(outcome);
    scrollToEnd();

    // Keep what the model said in the conversation (a stopped answer too).
    const calls = turn.calls.filter(Boolean);
    if (turn.content || calls.length) {
      const message = { role: "assistant", content: turn.content || (calls.length ? null : "") };
      if (calls.length) {
        message.tool_calls = calls.map((call) => ({
          id: call.id,
          type: "function",
          function: { name: call.name, arguments: call.arguments || "{}" },
        }));
      }
      state.messages.push(message);
    }
    if (outcome === "done" && calls.length) awaitToolResults(turn, calls);
  }

  // ----------------------------------------------------------------- tool results -------
  function awaitToolResults(turn, calls) {
    state.pendingTools = { turn, calls, results: new Map() };
    for (const call of calls) {
      const form = $(".tool-result-form", call.card);
      form.hidden = false;
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        submitToolResult(call, $(".tool-result", form).value);
      });
    }
    $(".tool-result", calls[0].card).focus();
  }

  function submitToolResult(call, text) {
    const pending = state.pendingTools;
    if (!pending || !pending.calls.includes(call) || state.controller) return;
    pending.results.set(call.id, text);
    $(".tool-result-form", call.card).hidden = true;
    const sent = $(".tool-result-sent", call.card);
    $(".tool-result-text", sent).textContent = text;
    sent.hidden = false;
    if (pending.results.size < pending.calls.length) return;
    state.pendingTools = null;
    for (const c of pending.calls) {
      state.messages.push({ role: "tool", tool_call_id: c.id, content: pending.results.get(c.id) });
    }
    runAssistant();
  }

  function dropPendingTools() {
    if (!state.pendingTools) return;
    for (const call of state.pendingTools.calls) $(".tool-result-form", call.card).hidden = true;
    state.pendingTools = null;
  }

  // ---------------------------------------------------------------- attachments --------
  function kindOf(file) {
    if (file.type.startsWith("image/")) return "image";
    if (file.type.startsWith("audio/")) return "audio";
    return null;
  }

  // The input_audio format the server knows for this file, or null (the server sniffs it).
  function audioFormat(file) {
    const known = ["wav", "mp3", "flac", "ogg"];
    const aliases = { wave: "wav", "x-wav": "wav", mpeg: "mp3", "x-flac": "flac" };
    for (const name of [file.type.split("/")[1] || "", (file.name.split(".").pop() || "").toLowerCase()]) {
      const format = aliases[name] || name;
      if (known.includes(format)) return format;
    }
    return null;
  }

  function addAttachments(files) {
    const allowed = (state.config && state.config.media) || [];
    for (const file of files) {
      const kind = kindOf(file);
      if (!kind || !allowed.includes(kind)) {
        showBanner({ title: "Not attached", detail: `This model does not accept ${file.type || "this kind of file"} (${file.name}).` });
        continue;
      }
      state.attachments.push({ file, kind, url: URL.createObjectURL(file) });
    }
    renderAttachments();
  }

  function renderAttachments() {
    ui.attachments.replaceChildren();
    ui.attachments.hidden = state.attachments.length === 0;
    state.attachments.forEach((item, i) => {
      const chip = document.createElement("span");
      chip.className = `chip ${item.kind}`;
      if (item.kind === "image") {
        const img = document.createElement("img");
        img.src = item.url;
        img.alt = "";
        chip.append(img);
      }
      const label = document.createElement("span");
      label.textContent = item.file.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "×";
      remove.title = "Remove";
      remove.addEventListener("click", () => {
        state.attachments.splice(i, 1);
        renderAttachments();
      });
      chip.append(label, remove);
      ui.attachments.append(chip);
    });
  }

  function userContent(text, attachments) {
    if (!attachments.length) return text;
    const parts = [];
    if (text) parts.push({ type: "text", text });
    for (const item of attachments) {
      const name = `file${state.nextFile++}`;
      state.files.set(name, item.file);
      if (item.kind === "image") {
        parts.push({ type: "image_url", image_url: { url: `attachment:${name}` } });
      } else {
        const audio = { data: `attachment:${name}` };
        const format = audioFormat(item.file);
        if (format) audio.format = format;
        parts.push({ type: "input_audio", input_audio: audio });
      }
    }
    return parts;
  }

  // -------------------------------------------------------------------- actions ---------
  function setBusy(busy) {
    document.body.classList.toggle("busy", busy);
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.send.disabled = busy;
  }

  function send() {
    if (state.controller) return;
    const text = ui.prompt.value.trim();
    if (!text && !state.attachments.length) return;
    dropPendingTools();
    const attachments = state.attachments;
    state.attachments = [];
    renderAttachments();
    state.messages.push({ role: "user", content: userContent(text, attachments) });
    addUserTurn(text, attachments);
    ui.prompt.value = "";
    autosize();
    runAssistant();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.epoch += 1;
    state.messages = [];
    state.files.clear();
    state.pendingTools = null;
    for (const node of [...ui.messages.querySelectorAll(".turn")]) node.remove();
    ui.empty.hidden = false;
    ui.prompt.focus();
  }

  function autosize() {
    ui.prompt.style.height = "auto";
    ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
  }

  function bind() {
    for (const [key, id] of Object.entries({
      model: "model", thinking: "thinking", thinkingControl: "thinking-control", settings: "settings",
      settingsToggle: "settings-toggle", newChat: "new-chat", system: "system", maxTokens: "max-tokens",
      temperature: "temperature", tools: "tools", toolsError: "tools-error", banner: "banner",
      tokenForm: "token-form", tokenInput: "token-input", messages: "messages", empty: "empty",
      attachments: "attachments", form: "composer-form", attach: "attach", file: "file",
      prompt: "prompt", send: "send", stop: "stop", tplUser: "tpl-user", tplAssistant: "tpl-assistant",
      tplToolCard: "tpl-tool-card",
    })) {
      ui[key] = document.getElementById(id);
    }
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      send();
    });
    ui.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });
    ui.prompt.addEventListener("input", autosize);
    ui.stop.addEventListener("click", stop);
    ui.newChat.addEventListener("click", newChat);
    ui.settingsToggle.addEventListener("click", () => {
      ui.settings.hidden = !ui.settings.hidden;
      ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
    });
    ui.attach.addEventListener("click", () => ui.file.click());
    ui.file.addEventListener("change", () => {
      addAttachments([...ui.file.files]);
      ui.file.value = "";
    });
    ui.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = ui.tokenInput.value.trim();
      ui.tokenInput.value = "";
      if (token) {
        state.token = token;
        checkAccess();
      }
    });
    window.addEventListener("hashchange", () => {
      const token = takeTokenFromFragment();
      if (token) {
        state.token = token;
        checkAccess();
      }
    });
  }

  async function main() {
    state.token = takeTokenFromFragment();
    bind();
    await loadConfig();
    await checkAccess();
    ui.prompt.focus();
  }

  main();
})();
