// The llm-foundry chat page: conversations live in this browser (localStorage); replies stream
// from the server's OpenAI-compatible /v1/chat/completions. No libraries, no network but this server.
"use strict";

(() => {
  const STORE = "llm-foundry-chat-v1";
  const $ = (id) => document.getElementById(id);
  const els = {
    messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"), regenerate: $("regenerate"),
    composer: $("composer"), chatList: $("chat-list"), newChat: $("new-chat"), temperature: $("temperature"),
    temperatureValue: $("temperature-value"), maxTokens: $("max-tokens"), system: $("system-prompt"),
    apiKey: $("api-key"), status: $("status"), modelName: $("model-name"), sidebar: $("sidebar"),
    toggle: $("toggle-sidebar"),
  };

  // ------------------------------------------------------------------ state
  let state = load();
  let model = null;          // the id from /v1/models
  let controller = null;     // AbortController of the reply being streamed
  let renderPending = null;  // requestAnimationFrame handle while streaming

  function load() {
    try {
      const s = JSON.parse(localStorage.getItem(STORE));
      if (s && Array.isArray(s.chats)) return s;
    } catch (e) { /* a corrupt store starts fresh */ }
    return { chats: [], current: null, settings: { temperature: 0.8, maxTokens: 256, system: "", apiKey: "" } };
  }
  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { setStatus("could not save: " + e.message, true); }
  }
  function uid() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }
  function current() { return state.chats.find((c) => c.id === state.current) || null; }
  function newChat() {
    const chat = { id: uid(), title: "New chat", messages: [], updated: Date.now() };
    state.chats.unshift(chat);
    state.current = chat.id;
    save();
    return chat;
  }

  // ------------------------------------------------------------------ markdown (escape first, then a small subset)
  const escapeHtml = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");

  function inline(text) {
    // `text` is already escaped. Code spans are cut out first so nothing inside them is formatted.
    const codes = [];
    let s = text.replace(/`([^`\n]+)`/g, (_, c) => { codes.push(c); return "\u0000" + (codes.length - 1) + "\u0000"; });
    s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s)]+)\)/g,
      (_, label, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`);
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>").replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*])\*([^*\n]+)\*(?!\*)/g, "$1<em>$2</em>").replace(/(^|[^\w])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/~~([^~\n]+)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[+i]}</code>`);
  }

  function markdown(src) {
    const lines = escapeHtml(src).split("\n");
    const out = [];
    let para = [];
    const flush = () => { if (para.length) { out.push(`<p>${para.map(inline).join("<br>")}</p>`); para = []; } };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/);
      if (fence) {  // a code block; one still open while streaming runs to the end
        flush();
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
        const lang = fence[2] ? `<span class="lang">${fence[2]}</span>` : "";
        out.push(`<pre>${lang}<code>${body.join("\n")}</code></pre>`);
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) { flush(); out.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`); continue; }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flush(); out.push("<hr>"); continue; }
      const list = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
      if (list) {
        flush();
        const ordered = /\d/.test(list[1]);
        const items = [];
        while (i < lines.length) {
          const m = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
          if (!m || /\d/.test(m[1]) !== ordered) break;
          items.push(`<li>${inline(m[2])}</li>`);
          i++;
        }
        i--;
        out.push(ordered ? `<ol>${items.join("")}</ol>` : `<ul>${items.join("")}</ul>`);
        continue;
      }
      if (/^&gt;\s?/.test(line)) {
        flush();
        const quoted = [];
        while (i < lines.length && /^&gt;\s?/.test(lines[i])) { quoted.push(inline(lines[i].replace(/^&gt;\s?/, ""))); i++; }
        i--;
        out.push(`<blockquote>${quoted.join("<br>")}</blockquote>`);
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      para.push(line);
    }
    flush();
    return out.join("");
  }

  // ------------------------------------------------------------------ rendering
  function setStatus(text, error = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", error);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderAssistantBody(msg, content) {
    content.replaceChildren();
    let html = "";
    let text = "";
    const flushText = () => { if (text) { html += markdown(text); text = ""; } };
    for (const part of msg.parts) {
      if (part.type === "text") { text += part.text; continue; }
      flushText();
      if (part.type === "tool_call") {
        html += `<div class="tool-call"><span class="tag">tool call</span>calculator(${escapeHtml(part.expression)})</div>`;
      } else if (part.type === "tool_result") {
        html += `<div class="tool-result"><span class="tag">result</span>${escapeHtml(part.content)}</div>`;
      }
    }
    flushText();
    content.innerHTML = html || "<p></p>";
  }

  function renderMessage(msg, index) {
    const box = el("div", `msg ${msg.role}`);
    box.dataset.index = index;
    if (msg.role === "user") {
      box.textContent = msg.content;
      return box;
    }
    box.appendChild(el("div", "role", model || "assistant"));
    const content = el("div", "content");
    box.appendChild(content);
    renderAssistantBody(msg, content);
    if (msg.streaming) box.classList.add("streaming");
    if (msg.stopped) box.appendChild(el("div", "note", "(stopped)"));
    else if (msg.finish === "length") box.appendChild(el("div", "note", "(reached the token limit)"));
    if (msg.error) box.appendChild(el("div", "error-box", msg.error));
    return box;
  }

  function renderChat() {
    const chat = current();
    els.messages.replaceChildren();
    if (!chat || !chat.messages.length) {
      els.messages.appendChild(el("p", "empty-hint", "Say something to start. 你好！"));
    } else {
      chat.messages.forEach((m, i) => els.messages.appendChild(renderMessage(m, i)));
    }
    const last = chat && chat.messages[chat.messages.length - 1];
    els.regenerate.hidden = !(last && last.role === "assistant" && !last.streaming);
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function renderList() {
    els.chatList.replaceChildren();
    for (const chat of state.chats) {
      const li = el("li", chat.id === state.current ? "current" : "");
      const open = el("button", "open", chat.title);
      open.type = "button";
      open.title = chat.title;
      open.addEventListener("click", () => { if (controller) return; state.current = chat.id; save(); renderAll(); closeSidebar(); });
      const del = el("button", "delete", "✕");
      del.type = "button";
      del.setAttribute("aria-label", "Delete conversation");
      del.addEventListener("click", () => {
        if (controller && chat.id === state.current) return;
        state.chats = state.chats.filter((c) => c.id !== chat.id);
        if (state.current === chat.id) state.current = state.chats.length ? state.chats[0].id : null;
        save(); renderAll();
      });
      li.append(open, del);
      els.chatList.appendChild(li);
    }
  }

  function renderAll() { renderList(); renderChat(); }

  // Re-render only the streaming message, at most once per frame.
  function scheduleRender(msg, index) {
    if (renderPending) return;
    renderPending = requestAnimationFrame(() => {
      renderPending = null;
      const box = els.messages.querySelector(`.msg[data-index="${index}"]`);
      const nearBottom = els.messages.scrollHeight - els.messages.scrollTop - els.messages.clientHeight < 80;
      if (box) box.replaceWith(renderMessage(msg, index)); else renderChat();
      if (nearBottom) els.messages.scrollTop = els.messages.scrollHeight;
    });
  }

  // ------------------------------------------------------------------ talking to the server
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = state.settings.apiKey.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function fetchModel() {
    try {
      const r = await fetch("/v1/models", { headers: headers() });
      const body = await r.json();
      if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
      model = body.data[0].id;
      els.modelName.textContent = model;
      document.title = model + " · llm-foundry";
      // A base model (no chat template) serves /v1/completions only: say so before anyone types.
      if (body.data[0].chat === false) setStatus("this model has no chat template; use /v1/completions", true);
      else setStatus("ready");
    } catch (e) {
      model = null;
      setStatus(e.message.includes("API key") ? "API key needed (see settings)" : "server: " + e.message, true);
    }
  }

  // OpenAI messages for the API from the conversation kept here.
  function apiMessages(messages) {
    const out = [];
    const system = state.settings.system.trim();
    if (system) out.push({ role: "system", content: system });
    for (const m of messages) {
      if (m.role === "user") { out.push({ role: "user", content: m.content }); continue; }
      const text = m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
      const calls = m.parts.filter((p) => p.type === "tool_call");
      const msg = { role: "assistant", content: text };
      if (calls.length) {
        msg.tool_calls = calls.map((c) => ({ id: c.id, type: "function",
          function: { name: "calculator", arguments: JSON.stringify({ expression: c.expression }) } }));
        msg.tool_results = m.parts.filter((p) => p.type === "tool_result")
          .map((p) => ({ tool_call_id: p.id, content: p.content }));
      }
      out.push(msg);
    }
    return out;
  }

  function addText(msg, text) {
    const last = msg.parts[msg.parts.length - 1];
    if (last && last.type === "text") last.text += text; else msg.parts.push({ type: "text", text });
  }

  function applyDelta(msg, choice) {
    const d = choice.delta || {};
    if (d.content) addText(msg, d.content);
    for (const call of d.tool_calls || []) {
      const args = JSON.parse((call.function && call.function.arguments) || "{}");
      msg.parts.push({ type: "tool_call", id: call.id, expression: args.expression || "" });
    }
    if (d.tool_result) msg.parts.push({ type: "tool_result", id: d.tool_result.tool_call_id, content: d.tool_result.content });
    if (choice.finish_reason) msg.finish = choice.finish_reason;
  }

  async function reply(chat) {
    const temperature = parseFloat(els.temperature.value);
    const maxTokens = Math.max(1, parseInt(els.maxTokens.value, 10) || 256);
    const msg = { role: "assistant", parts: [], streaming: true };
    chat.messages.push(msg);
    const index = chat.messages.length - 1;
    const history = apiMessages(chat.messages.slice(0, -1));
    setBusy(true);
    renderChat();
    controller = new AbortController();
    let dataLines = [];
    try {
      if (!model) await fetchModel();
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model: model || "", messages: history, stream: true, temperature, max_tokens: maxTokens }),
      });
      if (!r.ok) {
        let message = r.status + " " + r.statusText;
        try { const b = await r.json(); message = (b.error && b.error.message) || message; } catch (e) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder("utf-8");  // stream mode: a character split across chunks is kept whole
      let buffer = "";
      setStatus("generating…");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line.startsWith("data:")) { dataLines.push(line.slice(5).trimStart()); continue; }
          if (line !== "" || !dataLines.length) continue;
          const data = dataLines.join("\n");
          dataLines = [];
          if (data === "[DONE]") continue;
          const event = JSON.parse(data);
          if (event.error) throw new Error(event.error.message);
          for (const choice of event.choices || []) if (choice.index === 0) applyDelta(msg, choice);
          scheduleRender(msg, index);
        }
      }
      setStatus("ready");
    } catch (e) {
      if (e.name === "AbortError") { msg.stopped = true; setStatus("stopped"); }
      else { msg.error = e.message; setStatus("error", true); }
    } finally {
      msg.streaming = false;
      controller = null;
      if (renderPending) { cancelAnimationFrame(renderPending); renderPending = null; }
      chat.updated = Date.now();
      save();
      setBusy(false);
      renderChat();
    }
  }

  function setBusy(busy) {
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.regenerate.disabled = busy;
    els.newChat.disabled = busy;
  }

  async function send() {
    const text = els.input.value;
    if (!text.trim() || controller) return;
    const chat = current() || newChat();
    if (!chat.messages.length) chat.title = text.trim().slice(0, 40);
    chat.messages.push({ role: "user", content: text });
    els.input.value = "";
    autosize();
    renderList();
    await reply(chat);
  }

  async function regenerate() {
    const chat = current();
    if (!chat || controller) return;
    while (chat.messages.length && chat.messages[chat.messages.length - 1].role === "assistant") chat.messages.pop();
    if (!chat.messages.length) return;
    await reply(chat);
  }

  // ------------------------------------------------------------------ controls
  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = Math.min(els.input.scrollHeight, window.innerHeight * 0.4) + "px";
  }
  function closeSidebar() { els.sidebar.classList.remove("open"); els.toggle.setAttribute("aria-expanded", "false"); }

  els.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  els.input.addEventListener("keydown", (e) => {
    // Enter while an input method (Chinese, Japanese …) is composing picks a candidate; it must not send.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); send(); }
  });
  els.input.addEventListener("input", autosize);
  els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  els.regenerate.addEventListener("click", regenerate);
  els.newChat.addEventListener("click", () => { if (!controller) { newChat(); renderAll(); closeSidebar(); els.input.focus(); } });
  els.toggle.addEventListener("click", () => {
    const open = els.sidebar.classList.toggle("open");
    els.toggle.setAttribute("aria-expanded", String(open));
  });
  els.messages.addEventListener("click", closeSidebar);

  els.temperature.value = state.settings.temperature;
  els.temperatureValue.textContent = Number(state.settings.temperature).toFixed(2);
  els.maxTokens.value = state.settings.maxTokens;
  els.system.value = state.settings.system;
  els.apiKey.value = state.settings.apiKey;
  els.temperature.addEventListener("input", () => {
    state.settings.temperature = parseFloat(els.temperature.value);
    els.temperatureValue.textContent = state.settings.temperature.toFixed(2);
    save();
  });
  els.maxTokens.addEventListener("change", () => {
    state.settings.maxTokens = Math.max(1, parseInt(els.maxTokens.value, 10) || 256);
    els.maxTokens.value = state.settings.maxTokens;
    save();
  });
  els.system.addEventListener("change", () => { state.settings.system = els.system.value; save(); });
  els.apiKey.addEventListener("change", () => { state.settings.apiKey = els.apiKey.value; save(); fetchModel(); });

  // A reply that was streaming when the page closed is kept as stopped.
  for (const c of state.chats) for (const m of c.messages) if (m.streaming) { m.streaming = false; m.stopped = true; }
  if (!current() && state.chats.length) state.current = state.chats[0].id;
  renderAll();
  fetchModel();
  window.foundryChat = { markdown, escapeHtml };  // for tests and the curious
})();
