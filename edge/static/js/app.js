// The chat page of the edge: a conversation sidebar and a streaming chat view, over the edge's
// own API (same origin, the session in the edge's HttpOnly cookie; the edge's key, where it
// wants one, asked for and sent by auth.js).
//
// Safety: every string from the server (titles, model output, errors) reaches the page as a
// text node (dom.js, markdown.js): no string is ever parsed as HTML.

import { api, conversationPath, conversationsPath, errorOf, features } from "./api.js";
import { edgeFetch } from "./auth.js";
import { $, append, clear, h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { readEvents } from "./sse.js";

const PAGE_SIZE = 30;
const MESSAGES_PAGE = 100;
const UNDO_MS = 10000;
const SEARCH_DEBOUNCE_MS = 250;
const SEARCH_PAGES = 10; // pages loaded per query when titles are filtered here
const CANCEL_GRACE_MS = 3000;
const POLL_MS = 1000;
const POLL_LIMIT = 300;
const MAX_RESUMES = 3;
const INFLIGHT_KEY = "edge.inflight";
const MODEL_KEY = "edge.model";
const STATUS_TEXT = {
  streaming: "streaming…",
  interrupted: "interrupted",
  error: "error",
  stopped: "stopped",
};

// Counters the browser tests read: every SSE event received, and per stream.
const stats = { events: 0, contentEvents: 0, streams: [] };
window.edgeStats = stats;

const state = {
  features: { search: false, resume: false, cancel: false },
  persistence: true,
  list: [], // conversation objects, in the server's order (newest first)
  cursor: null,
  hasMore: true,
  loading: null,
  listGeneration: 0,
  query: "",
  searchPages: 0,
  views: new Map(), // conversation id -> view
  current: null,
  stopped: new Set(), // message ids the user stopped (the store says "error")
};

// -- views and messages -----------------------------------------------------------------------

function newView(id = null, title = null) {
  const view = { id, title, messages: [], loaded: id === null, loading: false, stream: null, error: null };
  if (id !== null) state.views.set(id, view);
  return view;
}

function viewFor(id) {
  return state.views.get(id) || newView(id, state.list.find((c) => c.id === id)?.title ?? null);
}

function messageVm(message) {
  let content = message.content;
  if (Array.isArray(content)) {
    content = content.map((part) => (part && typeof part.text === "string" ? part.text : "")).join("\n");
  }
  // A reply stopped on purpose is stored as an error whose reason is "cancelled".
  const stopped = message.status === "error" && message.status_reason === "cancelled";
  return {
    id: message.id,
    role: message.role,
    content: typeof content === "string" ? content : "",
    status: stopped ? "stopped" : message.status,
    reason: message.status_reason || null,
    resumeUrl: typeof message.resume_url === "string" && message.resume_url.startsWith("/") ? message.resume_url : null,
    finishReason: message.finish_reason,
    toolCalls: message.tool_calls || null,
    storageFailed: false,
    error: null,
    el: null,
  };
}

// -- rendering --------------------------------------------------------------------------------

function render() {
  renderHead();
  renderMessages();
  renderComposer();
  renderSidebar();
}

function renderHead() {
  const title = state.current?.title || "New chat";
  $("#chat-title").textContent = title;
  document.title = `${title} · edge`;
}

function renderComposer() {
  const streaming = Boolean(state.current?.stream);
  $("#send").disabled = streaming;
  $("#stop").hidden = !streaming;
}

function renderMessages() {
  const box = $("#messages");
  clear(box);
  const view = state.current;
  if (view.error) {
    box.append(h("p", { class: "empty error-text" }, view.error));
    return;
  }
  if (!view.loaded && view.messages.length === 0) {
    box.append(h("p", { class: "empty muted" }, "Loading…"));
    return;
  }
  if (view.messages.length === 0) {
    box.append(h("p", { class: "empty muted" }, "Start a conversation: type a message below."));
    return;
  }
  for (const vm of view.messages) box.append(messageEl(vm));
  box.scrollTop = box.scrollHeight;
}

function messageEl(vm) {
  const el = h("article", { class: `message ${vm.role}` });
  vm.el = el;
  fillMessage(vm);
  return el;
}

function fillMessage(vm) {
  const el = vm.el;
  clear(el);
  el.dataset.status = vm.status || "";
  el.dataset.id = vm.id || "";
  const label = { user: "You", assistant: "Assistant", tool: "Tool", system: "System" }[vm.role] || vm.role;
  const head = h("div", { class: "role" }, label);
  const status = STATUS_TEXT[vm.status];
  if (status) head.append(h("span", { class: `badge status-${vm.status}` }, status));
  if (vm.finishReason === "length") head.append(h("span", { class: "badge" }, "cut at max tokens"));
  el.append(head);
  const body = h("div", { class: "body" });
  if (vm.role === "assistant") {
    body.append(renderMarkdown(vm.content));
    if (vm.status === "streaming" && !vm.content) body.append(h("span", { class: "typing" }, "…"));
  } else {
    body.classList.add("plain");
    body.append(vm.content);
  }
  for (const call of vm.toolCalls || []) {
    const fn = call && call.function ? call.function : {};
    body.append(h("pre", { class: "tool-call" }, `${fn.name || "tool"}(${fn.arguments || ""})`));
  }
  el.append(body);
  if (vm.status === "interrupted") {
    el.append(h("div", { class: "note" }, "The reply was interrupted: the edge that produced it stopped. This is what was saved."));
  } else if (vm.status === "stopped") {
    el.append(h("div", { class: "note" }, "Stopped."));
  } else if (vm.status === "error") {
    const why = vm.reason ? ` (${vm.reason.replace(/_/g, " ")})` : "";
    el.append(h("div", { class: "note error-text" }, vm.error || `The reply ended with an error${why}; this is what was saved.`));
  }
  if (vm.storageFailed) {
    el.append(h("div", { class: "notice storage-failed", role: "status" }, "response not saved to history"));
  }
}

function updateMessage(vm) {
  if (!vm.el || !vm.el.isConnected) return;
  const box = $("#messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  fillMessage(vm);
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderSidebar() {
  const ul = $("#conversations");
  clear(ul);
  const status = $("#list-status");
  if (!state.persistence) {
    status.textContent = "History is off on this edge (PERSIST_TRANSCRIPTS=false): nothing is stored.";
    $("#search").hidden = true;
    return;
  }
  let items = state.list;
  const query = state.query.toLowerCase();
  if (query && !state.features.search) {
    items = items.filter((c) => (c.title || "Untitled").toLowerCase().includes(query));
  }
  items = [...items.filter((c) => c.pinned), ...items.filter((c) => !c.pinned)];
  for (const c of items) ul.append(itemEl(c));
  if (state.loading) status.textContent = "Loading…";
  else if (items.length === 0) status.textContent = query ? "No conversation matches." : "No conversations yet.";
  else status.textContent = "";
}

function itemEl(c) {
  const view = state.views.get(c.id);
  const li = h("li", {
    class: ["conversation", state.current?.id === c.id ? "active" : "", c.pinned ? "pinned" : ""].join(" ").trim(),
    dataset: { id: c.id },
  });
  const open = h(
    "button",
    { type: "button", class: "open", title: c.title || "Untitled", onclick: () => navigate(c.id) },
    c.pinned ? h("span", { class: "pin-mark", title: "Pinned" }, "▲") : null,
    h("span", { class: "title" }, c.title || "Untitled"),
    view?.stream ? h("span", { class: "live", title: "Streaming" }) : null,
  );
  const actions = h(
    "span",
    { class: "actions" },
    h("button", { type: "button", class: "rename", "aria-label": "Rename", title: "Rename", onclick: () => startRename(c, li) }, "Rename"),
    h(
      "button",
      { type: "button", class: "pin", "aria-label": c.pinned ? "Unpin" : "Pin", title: c.pinned ? "Unpin" : "Pin", onclick: () => togglePin(c) },
      c.pinned ? "Unpin" : "Pin",
    ),
    h("button", { type: "button", class: "delete", "aria-label": "Delete", title: "Delete", onclick: () => remove(c) }, "Delete"),
  );
  return append(li, [open, actions]);
}

// -- notices ----------------------------------------------------------------------------------

function toast(text, { action = null, onAction = null, ms = 6000, kind = "" } = {}) {
  const box = $("#toasts");
  const el = h("div", { class: `toast ${kind}`.trim(), role: "status" }, h("span", {}, text));
  let timer = null;
  const close = () => {
    clearTimeout(timer);
    el.remove();
  };
  if (action) {
    el.append(
      h("button", { type: "button", class: "toast-action", onclick: () => {
        close();
        onAction();
      } }, action),
    );
  }
  el.append(h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: close }, "×"));
  box.append(el);
  timer = setTimeout(close, ms);
  return el;
}

function failed(what, error) {
  toast(`${what}: ${error && error.message ? error.message : error}`, { kind: "error" });
}

// -- the conversation list --------------------------------------------------------------------

async function loadMore() {
  if (state.loading || !state.hasMore || !state.persistence) return state.loading;
  const generation = state.listGeneration;
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.cursor) params.set("after", state.cursor);
  if (state.query && state.features.search) params.set("q", state.query);
  state.loading = (async () => {
    try {
      const page = await api("GET", `${conversationsPath}?${params}`);
      if (generation !== state.listGeneration) return;
      const known = new Set(state.list.map((c) => c.id));
      for (const c of page.data) if (!known.has(c.id)) state.list.push(c);
      state.cursor = page.last_id || state.cursor;
      state.hasMore = Boolean(page.has_more) && page.data.length > 0;
    } catch (error) {
      if (error.status === 501) {
        state.persistence = false;
        state.hasMore = false;
      } else {
        state.hasMore = false;
        failed("Could not load the conversations", error);
      }
    } finally {
      if (generation === state.listGeneration) state.loading = null;
    }
  })();
  renderSidebar();
  await state.loading;
  renderSidebar();
  fillSidebar();
}

/** Load more while the list does not fill its box (or a title search has more to look at). */
function fillSidebar() {
  const ul = $("#conversations");
  if (!state.hasMore || state.loading) return;
  const filtering = state.query && !state.features.search;
  if (filtering && state.searchPages >= SEARCH_PAGES) return;
  if (ul.scrollHeight <= ul.clientHeight + 40) {
    if (filtering) state.searchPages += 1;
    loadMore();
  }
}

function resetList() {
  state.listGeneration += 1;
  state.list = [];
  state.cursor = null;
  state.hasMore = true;
  state.loading = null;
  return loadMore();
}

/** Merge the newest page into the list (a conversation just created shows at the top). */
async function refreshTop() {
  if (!state.persistence || (state.query && state.features.search)) return;
  try {
    const page = await api("GET", `${conversationsPath}?limit=${PAGE_SIZE}`);
    const byId = new Map(state.list.map((c) => [c.id, c]));
    const fresh = [];
    for (const c of page.data) {
      if (byId.has(c.id)) Object.assign(byId.get(c.id), c);
      else fresh.push(c);
    }
    state.list = [...fresh, ...state.list];
    if (state.list.length === fresh.length) state.cursor = page.last_id;
    for (const c of page.data) {
      const view = state.views.get(c.id);
      if (view && c.title) view.title = c.title;
    }
    renderSidebar();
    renderHead();
  } catch {
    // the list stays as it was
  }
}

function replaceItem(updated) {
  const index = state.list.findIndex((c) => c.id === updated.id);
  if (index >= 0) state.list[index] = updated;
  const view = state.views.get(updated.id);
  if (view) view.title = updated.title;
  renderSidebar();
  renderHead();
}

function startRename(c, li) {
  const input = h("input", { class: "rename-input", "aria-label": "New title", maxlength: "512" });
  input.value = c.title || "";
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (!save || !title || title === c.title) {
      renderSidebar();
      return;
    }
    try {
      replaceItem(await api("PATCH", conversationPath(c.id), { title }));
    } catch (error) {
      failed("Could not rename", error);
      renderSidebar();
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return;
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  clear(li).append(input);
  input.focus();
  input.select();
}

async function togglePin(c) {
  try {
    replaceItem(await api("PATCH", conversationPath(c.id), { pinned: !c.pinned }));
  } catch (error) {
    failed("Could not pin", error);
  }
}

async function remove(c) {
  const index = state.list.findIndex((item) => item.id === c.id);
  try {
    await api("DELETE", conversationPath(c.id));
  } catch (error) {
    failed("Could not delete", error);
    return;
  }
  state.list = state.list.filter((item) => item.id !== c.id);
  if (state.current?.id === c.id) newChat();
  renderSidebar();
  fillSidebar();
  toast(`Deleted “${c.title || "Untitled"}”.`, {
    action: "Undo",
    ms: UNDO_MS,
    onAction: async () => {
      try {
        const restored = await api("POST", conversationPath(c.id, "restore"));
        if (!state.list.some((item) => item.id === restored.id)) {
          state.list.splice(Math.min(Math.max(index, 0), state.list.length), 0, restored);
        }
        renderSidebar();
      } catch (error) {
        failed("Could not restore", error);
      }
    },
  });
}

// -- navigation -------------------------------------------------------------------------------

function setCurrent(view) {
  state.current = view;
  render();
  $("#prompt").focus();
}

function newChat() {
  const current = state.current;
  if (current && current.id === null && current.messages.length === 0) {
    render();
    return;
  }
  if (location.hash) history.pushState(null, "", location.pathname + location.search);
  setCurrent(newView());
}

function navigate(id) {
  if (state.current?.id === id) return;
  history.pushState(null, "", `#${encodeURIComponent(id)}`);
  openConversation(id);
}

function route() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id) openConversation(id);
  else if (!state.current || state.current.id !== null) setCurrent(newView());
}

function openConversation(id) {
  const view = viewFor(id);
  setCurrent(view);
  if (!view.loaded && !view.loading) loadHistory(view);
}

async function fetchHistory(id) {
  const conversation = await api("GET", conversationPath(id));
  const messages = [...conversation.messages.data];
  let page = conversation.messages;
  while (page.has_more && page.last_seq !== null) {
    page = await api("GET", `${conversationPath(id, "messages")}?after_seq=${page.last_seq}&limit=${MESSAGES_PAGE}`);
    messages.push(...page.data);
  }
  return { conversation, messages };
}

async function loadHistory(view, { quiet = false } = {}) {
  view.loading = true;
  try {
    const { conversation, messages } = await fetchHistory(view.id);
    view.title = conversation.title;
    mergeHistory(view, messages);
    view.loaded = true;
    view.error = null;
  } catch (error) {
    if (!quiet) view.error = error.status === 404 ? "This conversation does not exist (or was deleted)." : `Could not load it: ${error.message}`;
  } finally {
    view.loading = false;
  }
  if (state.current === view) render();
  const last = view.messages[view.messages.length - 1];
  if (!view.stream && last && last.role === "assistant" && last.status === "streaming") follow(view, last);
}

/** The stored messages, with the reply this page is streaming kept live in its place. */
function mergeHistory(view, messages) {
  const flags = new Map(view.messages.filter((m) => m.id).map((m) => [m.id, m]));
  const vms = messages.map((message) => {
    const vm = messageVm(message);
    const old = flags.get(vm.id);
    if (old) vm.storageFailed = old.storageFailed;
    if (vm.status === "error" && state.stopped.has(vm.id)) vm.status = "stopped";
    return vm;
  });
  // A reply stopped before the edge said its id (an edge without X-Message-ID): the last one.
  const lastOf = (list) => [...list].reverse().find((m) => m.role === "assistant");
  const before = lastOf(view.messages);
  const after = lastOf(vms);
  if (before && after && !before.id && before.status === "stopped" && after.status === "error") {
    after.status = "stopped";
    state.stopped.add(after.id);
  }
  const live = view.stream?.vm;
  if (live) {
    const at = vms.findIndex((vm) => vm.id && vm.id === live.id);
    if (at >= 0) vms[at] = live;
    else if (!vms.includes(live)) vms.push(live);
  }
  view.messages = vms;
}

// -- streams ----------------------------------------------------------------------------------

function startStream(view, vm, kind) {
  const stat = { kind, conversation: view.id, message: vm.id || null, events: 0, contentEvents: 0, chars: 0, done: false, status: null, started: performance.now(), ended: null };
  stats.streams.push(stat);
  const stream = { view, vm, kind, stat, abort: new AbortController(), messageId: vm.id || null, lastEventId: null, stopped: false, errored: false, resumes: 0 };
  view.stream = stream;
  return stream;
}

function inflight() {
  try {
    return JSON.parse(sessionStorage.getItem(INFLIGHT_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

function rememberInflight(stream) {
  if (!stream.view.id || !stream.messageId) return;
  const all = inflight();
  all[stream.view.id] = { message: stream.messageId, lastEventId: stream.lastEventId };
  sessionStorage.setItem(INFLIGHT_KEY, JSON.stringify(all));
}

function forgetInflight(stream) {
  if (!stream.view.id) return;
  const all = inflight();
  delete all[stream.view.id];
  sessionStorage.setItem(INFLIGHT_KEY, JSON.stringify(all));
}

async function send() {
  const view = state.current;
  const input = $("#prompt");
  const text = input.value;
  if (!text.trim() || view.stream) return;
  const model = $("#model").value;
  if (!model) {
    toast("No model to send to: the model list is empty.", { kind: "error" });
    return;
  }
  input.value = "";
  const earlier = view.messages.filter((m) => (m.role === "user" || m.role === "assistant") && m.content);
  const question = { id: null, role: "user", content: text, status: "complete", el: null };
  const reply = { id: null, role: "assistant", content: "", status: "streaming", storageFailed: false, error: null, el: null };
  view.messages.push(question, reply);
  view.loaded = true;
  if (!view.title) view.title = text.trim().slice(0, 80);
  const stream = startStream(view, reply, "chat");
  render();

  // Background generation: where the edge allows it, a reload does not end the reply (the
  // page follows it again); elsewhere the header is ignored (and never sent upstream).
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream", "X-Background-Generation": "true" };
  if (view.id) headers["X-Conversation-ID"] = view.id;
  // With persistence on the edge prepends the stored history; off, the page sends it.
  const messages = state.persistence ? [] : earlier.map((m) => ({ role: m.role, content: m.content }));
  messages.push({ role: "user", content: text });
  let response;
  try {
    response = await edgeFetch("/v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify({ model, stream: true, messages }),
      signal: stream.abort.signal,
    });
  } catch (error) {
    finishStream(stream, stream.stopped ? "stopped" : "error", stream.stopped ? null : `Could not reach the edge: ${error.message}`);
    return;
  }
  if (!response.ok) {
    const error = await errorOf(response);
    finishStream(stream, "error", error.message);
    return;
  }
  const id = response.headers.get("X-Conversation-ID");
  stream.messageId = response.headers.get("X-Message-ID");
  reply.id = stream.messageId;
  stream.stat.message = stream.messageId;
  if (id && !view.id) {
    view.id = id;
    stream.stat.conversation = id;
    state.views.set(id, view);
    if (state.current === view) replaceHash(id);
    refreshTop();
  }
  rememberInflight(stream);
  renderSidebar();
  await pump(stream, response);
}

function replaceHash(id) {
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
}

/** Follow a reply that is still streaming: the resume stream if the edge has one, otherwise
 * the stored reply, read again until it is no longer streaming. */
async function follow(view, vm, lastEventId = null, resumes = 0) {
  if (view.stream) return;
  if (!state.features.resume || !vm.id) {
    poll(view, vm);
    return;
  }
  const stream = startStream(view, vm, "resume");
  stream.resumes = resumes;
  vm.status = "streaming";
  // After the last event this page applied; else after the stored content it shows (the
  // message's resume_url); else from the reply's first event.
  let url = conversationPath(view.id, "messages", vm.id, "stream");
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  else if (vm.resumeUrl) url = vm.resumeUrl;
  else vm.content = "";
  vm.resumeUrl = null;
  updateMessage(vm);
  renderComposer();
  renderSidebar();
  let response;
  try {
    response = await edgeFetch(url, { headers, signal: stream.abort.signal });
  } catch (error) {
    finishStream(stream, stream.stopped ? "stopped" : "error", stream.stopped ? null : `Could not reach the edge: ${error.message}`);
    return;
  }
  if (!response.ok) {
    finishStream(stream, "error", (await errorOf(response)).message);
    return;
  }
  rememberInflight(stream);
  await pump(stream, response);
}

async function poll(view, vm) {
  for (let i = 0; i < POLL_LIMIT && !view.stream; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      const { messages } = await fetchHistory(view.id);
      const stored = messages.find((m) => m.id === vm.id);
      if (!stored) return;
      const fresh = messageVm(stored);
      Object.assign(vm, { content: fresh.content, status: fresh.status, finishReason: fresh.finishReason });
      updateMessage(vm);
      if (fresh.status !== "streaming") return;
    } catch {
      return;
    }
  }
}

async function pump(stream, response) {
  let done = false;
  let failure = null;
  try {
    for await (const event of readEvents(response.body)) {
      stats.events += 1;
      stream.stat.events += 1;
      if (event.hasId && event.id !== stream.lastEventId) {
        stream.lastEventId = event.id;
        rememberInflight(stream);
      }
      if (event.data === "[DONE]") {
        done = true;
        continue;
      }
      onChunk(stream, event);
    }
  } catch (error) {
    failure = error;
  }
  if (stream.stopped) finishStream(stream, "stopped");
  else if (stream.errored) finishStream(stream, "error");
  else if (done) finishStream(stream, stream.vm.status === "streaming" ? "complete" : stream.vm.status);
  else if (stream.vm.status !== "streaming") finishStream(stream, stream.vm.status);
  else if (state.features.resume && stream.messageId && stream.view.id && stream.resumes < MAX_RESUMES) {
    // The connection broke mid-reply: pick it up where it left off.
    endStream(stream);
    await follow(stream.view, stream.vm, stream.lastEventId, stream.resumes + 1);
  } else {
    finishStream(stream, "error", `The connection to the edge was lost${failure ? ` (${failure.message})` : ""}.`);
  }
}

function onChunk(stream, event) {
  const vm = stream.vm;
  let chunk;
  try {
    chunk = JSON.parse(event.data);
  } catch {
    return;
  }
  if (!chunk || typeof chunk !== "object") return;
  if (chunk.error) {
    vm.status = "error";
    vm.error = `The reply failed: ${chunk.error.message || chunk.error.type || "error"}`;
    stream.errored = true;
    updateMessage(vm);
    return;
  }
  const metadata = chunk.metadata && typeof chunk.metadata === "object" ? chunk.metadata : {};
  if (metadata.storage_failed) vm.storageFailed = true;
  if (typeof metadata.status === "string") {
    // How a resumed reply ended, as stored: complete, error (with its reason) or interrupted.
    vm.reason = metadata.reason || null;
    vm.status = metadata.status === "error" && metadata.reason === "cancelled" ? "stopped" : metadata.status;
    if (vm.status === "error") {
      vm.error = `The reply ended with an error${metadata.reason ? ` (${metadata.reason})` : ""}; this is what was saved.`;
      stream.errored = true;
    }
  }
  for (const choice of Array.isArray(chunk.choices) ? chunk.choices : []) {
    if (!choice || (choice.index || 0) !== 0) continue;
    const delta = choice.delta || {};
    if (typeof delta.content === "string" && delta.content) {
      vm.content += delta.content;
      stats.contentEvents += 1;
      stream.stat.contentEvents += 1;
      stream.stat.chars += delta.content.length;
    }
    if (choice.finish_reason) vm.finishReason = choice.finish_reason;
  }
  updateMessage(vm);
}

function endStream(stream) {
  stream.stat.done = true;
  stream.stat.status = stream.vm.status;
  stream.stat.ended = performance.now();
  if (stream.view.stream === stream) stream.view.stream = null;
}

function finishStream(stream, status, error = null) {
  const vm = stream.vm;
  if (vm.status === "streaming" || status === "stopped") vm.status = status;
  if (error) vm.error = error;
  if (status === "stopped" && vm.id) state.stopped.add(vm.id);
  endStream(stream);
  forgetInflight(stream);
  updateMessage(vm);
  if (state.current === stream.view) renderComposer();
  renderSidebar();
  if (stream.view.id && state.persistence && !vm.storageFailed) {
    // The stored truth: ids, the final status, and the title the edge gave a new conversation.
    loadHistory(stream.view, { quiet: true }).then(() => refreshTop());
  }
}

async function stop() {
  const stream = state.current?.stream;
  if (!stream || stream.stopped) return;
  stream.stopped = true;
  if (state.features.cancel && stream.messageId && stream.view.id) {
    try {
      const response = await edgeFetch(conversationPath(stream.view.id, "messages", stream.messageId, "cancel"), { method: "POST" });
      if (response.ok) {
        // The edge ends the stream itself; close it here if it does not soon.
        setTimeout(() => stream.abort.abort(), CANCEL_GRACE_MS);
        return;
      }
    } catch {
      // fall through: close the stream
    }
  }
  stream.abort.abort();
}

// -- models -----------------------------------------------------------------------------------

async function loadModels() {
  const select = $("#model");
  let ids = [];
  try {
    const body = await api("GET", "/v1/models");
    ids = (Array.isArray(body.data) ? body.data : []).map((m) => m && m.id).filter((id) => typeof id === "string");
  } catch (error) {
    toast(`Could not load the model list: ${error.message}`, { kind: "error" });
  }
  const saved = localStorage.getItem(MODEL_KEY);
  clear(select);
  for (const id of ids) select.append(h("option", { value: id }, id));
  if (saved && ids.includes(saved)) select.value = saved;
}

// -- start ------------------------------------------------------------------------------------

function wire() {
  $("#composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("#prompt").addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter is a new line; never while an IME composition is open.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    send();
  });
  $("#stop").addEventListener("click", stop);
  $("#new-chat").addEventListener("click", newChat);
  $("#model").addEventListener("change", (event) => localStorage.setItem(MODEL_KEY, event.target.value));
  $("#conversations").addEventListener("scroll", (event) => {
    const ul = event.target;
    if (ul.scrollTop + ul.clientHeight >= ul.scrollHeight - 80) loadMore();
  });
  let timer = null;
  $("#search").addEventListener("input", (event) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.query = event.target.value.trim();
      state.searchPages = 0;
      if (state.features.search) resetList();
      else {
        renderSidebar();
        fillSidebar();
      }
    }, SEARCH_DEBOUNCE_MS);
  });
  window.addEventListener("popstate", route);
}

async function main() {
  wire();
  state.current = newView();
  render();
  const [found] = await Promise.all([features(), loadModels()]);
  state.features = found;
  document.body.dataset.features = Object.keys(found).filter((k) => found[k]).join(" ");
  await loadMore();
  // A reply this tab was streaming when it reloaded: follow it again at once (the history
  // read waits while the edge is still storing it). The prompt is never sent again.
  const id = decodeURIComponent(location.hash.slice(1));
  const pending = id ? inflight()[id] : null;
  if (pending && state.features.resume) {
    const view = viewFor(id);
    const vm = { id: pending.message, role: "assistant", content: "", status: "streaming", storageFailed: false, error: null, el: null };
    view.messages.push(vm);
    follow(view, vm);
  }
  route();
  document.body.dataset.ready = "true";
}

main();
