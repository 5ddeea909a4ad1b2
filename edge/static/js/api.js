// The edge's own endpoints, same origin: the session is the HttpOnly cf_session_id cookie the
// edge sets, sent by the browser on every request (the page never sees it). Every call goes
// through edgeFetch (auth.js), which adds the edge's key where the edge wants one.

import { edgeFetch } from "./auth.js";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = String(body.error.message || message);
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await edgeFetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export const conversationsPath = "/v1/conversations";

export function conversationPath(id, ...rest) {
  return [conversationsPath, encodeURIComponent(id), ...rest.map(encodeURIComponent)].join("/");
}

/**
 * What this edge serves, read from its OpenAPI document: search in the listing (q=), the
 * resume stream and the cancel endpoint. The page adapts: without them it filters titles
 * itself, shows the stored reply after a reload, and stops by closing the stream.
 */
export async function features() {
  const found = { search: false, resume: false, cancel: false };
  try {
    const doc = await api("GET", "/openapi.json");
    const paths = doc.paths || {};
    const norm = (p) => p.replace(/\{[^}]*\}/g, "{}");
    const byNorm = new Map(Object.entries(paths).map(([p, item]) => [norm(p), item]));
    const resolve = (node) => {
      if (node && typeof node.$ref === "string" && node.$ref.startsWith("#/")) {
        let target = doc;
        for (const part of node.$ref.slice(2).split("/")) target = target?.[part.replace(/~1/g, "/").replace(/~0/g, "~")];
        return target || {};
      }
      return node || {};
    };
    const list = byNorm.get("/v1/conversations")?.get;
    const params = [...(byNorm.get("/v1/conversations")?.parameters || []), ...(list?.parameters || [])].map(resolve);
    found.search = params.some((p) => p.in === "query" && p.name === "q");
    found.resume = Boolean(byNorm.get("/v1/conversations/{}/messages/{}/stream")?.get);
    found.cancel = Boolean(byNorm.get("/v1/conversations/{}/messages/{}/cancel")?.post);
  } catch {
    // no document: the basic page
  }
  return found;
}
