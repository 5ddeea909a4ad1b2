// The edge's own key, where the edge has EDGE_API_KEYS set: every API call carries
// `Authorization: Bearer <key>`. The page learns that a key is needed from a 401 whose code is
// `invalid_api_key`; it then asks for the key in a small form and keeps it in sessionStorage
// (this tab only, gone when the tab closes): never in localStorage, never in a cookie.
//
// The page itself (`/`, `/static/...`) is served without the key: static files, no data.

import { $ } from "./dom.js";

const KEY_STORE = "edge.apiKey";

let asking = null; // the pending form: a promise of the key the user enters

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null;
  }
}

let memory = null; // the key, when sessionStorage is unavailable

function keep(key) {
  try {
    sessionStorage.setItem(KEY_STORE, key);
  } catch {
    // storage refused: the key lives as long as this page
  }
  memory = key;
}

function currentKey() {
  return storedKey() ?? memory;
}

function forget(key) {
  if (storedKey() === key) {
    try {
      sessionStorage.removeItem(KEY_STORE);
    } catch {
      // nothing kept
    }
  }
  if (memory === key) memory = null;
}

/** Show the key form (with `message` when a key was refused) until a key is entered. */
export function askForKey(message = "") {
  const form = $("#key-form");
  const note = $("#key-message");
  if (message || !asking) {
    note.textContent = message;
    note.hidden = !message;
  }
  if (!asking) {
    asking = new Promise((resolve) => {
      const input = $("#key-input");
      input.value = "";
      form.hidden = false;
      document.body.dataset.keyForm = "open";
      input.focus();
      const onSubmit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        form.removeEventListener("submit", onSubmit);
        input.value = "";
        form.hidden = true;
        delete document.body.dataset.keyForm;
        keep(key);
        asking = null;
        resolve(key);
      };
      form.addEventListener("submit", onSubmit);
    });
  }
  return asking;
}

async function refusedForKey(response) {
  if (response.status !== 401) return false;
  try {
    const body = await response.clone().json();
    return Boolean(body && body.error && body.error.code === "invalid_api_key");
  } catch {
    return false;
  }
}

/**
 * fetch() with the edge's key: on a 401 `invalid_api_key` the key form is shown (again, with a
 * message, if the key sent was refused) and the request is sent again with the key entered.
 * Nothing was done by a request refused there (the edge checks the key before anything else).
 */
export async function edgeFetch(path, init = {}) {
  for (;;) {
    const key = currentKey();
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...init, headers });
    if (!(await refusedForKey(response))) return response;
    if (key !== null && key === currentKey()) {
      forget(key);
      await askForKey("The edge refused that key. Try again.");
    } else if (currentKey() === null) {
      await askForKey();
    }
    // else another request got a new key meanwhile: try that one
    if (init.signal && init.signal.aborted) throw new DOMException("The request was aborted.", "AbortError");
  }
}
