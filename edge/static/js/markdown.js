// A small Markdown renderer for model output. It builds DOM nodes with createElement and text
// nodes only: no string from the model is ever parsed as HTML, so markup in a reply (<img
// onerror=...>, <script>) shows as the text it is. Links keep only http:, https: and mailto:
// targets. Supported: paragraphs, line breaks, headings, fenced and indented code blocks,
// block quotes, ordered and unordered (nested) lists, tables, rules, `code`, **strong**,
// *emphasis*, ~~strikethrough~~, [links](https://...), <https://autolinks> and bare URLs.
// An unterminated code fence (a reply still streaming) runs to the end of the text.

import { h } from "./dom.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])([ \t]+(.*))?$/;
const INDENTED = /^(?: {4}|\t)(.*)$/;
const TABLE_RULE = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const MAX_DEPTH = 12;

/** Render Markdown text into a DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  blocks(String(text ?? "").split(/\r\n|\r|\n/), fragment, 0);
  return fragment;
}

function isBlank(line) {
  return line.trim() === "";
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function blocks(lines, parent, depth) {
  if (depth > MAX_DEPTH) {
    parent.append(h("p", {}, lines.join("\n")));
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !isClosingFence(lines[i], fence)) body.push(lines[i++]);
      i += 1; // the closing fence (or past the end)
      parent.append(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    if ((m = INDENTED.exec(line))) {
      const body = [];
      while (i < lines.length && (INDENTED.test(lines[i]) || isBlank(lines[i]))) {
        body.push(lines[i].replace(/^(?: {4}|\t)/, ""));
        i += 1;
      }
      while (body.length && isBlank(body[body.length - 1])) body.pop();
      parent.append(codeBlock(body.join("\n"), ""));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const heading = h(`h${m[1].length}`);
      inline(m[2] || "", heading);
      parent.append(heading);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(h("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && !isBlank(lines[i])) {
        const q = QUOTE.exec(lines[i]);
        body.push(q ? q[1] : lines[i]);
        i += 1;
      }
      const quote = h("blockquote");
      blocks(body, quote, depth + 1);
      parent.append(quote);
      continue;
    }
    if (ITEM.test(line)) {
      i = list(lines, i, parent, depth);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = table(lines, i, parent);
      continue;
    }
    const body = [];
    while (i < lines.length && !isBlank(lines[i]) && !(body.length && startsBlock(lines[i]))) {
      body.push(lines[i].trim());
      i += 1;
    }
    const paragraph = h("p");
    body.forEach((text, n) => {
      if (n) paragraph.append(h("br"));
      inline(text, paragraph);
    });
    parent.append(paragraph);
  }
}

function isClosingFence(line, fence) {
  const trimmed = line.trim();
  return trimmed.length >= fence.length && trimmed === fence[0].repeat(trimmed.length);
}

function codeBlock(text, language) {
  const code = h("code", language ? { class: `language-${language.replace(/[^\w+-]/g, "")}` } : {}, text);
  const copy = h("button", { type: "button", class: "copy", "aria-label": "Copy code" }, "Copy");
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(text).then(
      () => {
        copy.textContent = "Copied";
        setTimeout(() => (copy.textContent = "Copy"), 1500);
      },
      () => {},
    );
  });
  const head = h("div", { class: "code-head" }, h("span", { class: "code-lang" }, language || "code"), copy);
  return h("div", { class: "code-block" }, head, h("pre", {}, code));
}

function list(lines, i, parent, depth) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const el = h(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) el.setAttribute("start", String(parseInt(first[2], 10)));
  const indent = first[1].length;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const width = m[1].length + m[2].length + 1;
    const body = [m[4] || ""];
    i += 1;
    while (i < lines.length) {
      const next = lines[i];
      if (isBlank(next)) {
        // A blank line continues the item only if an indented line follows.
        if (i + 1 < lines.length && /^\s{2,}\S/.test(lines[i + 1])) {
          body.push("");
          i += 1;
          continue;
        }
        break;
      }
      const sibling = ITEM.exec(next);
      if (sibling && sibling[1].length <= indent) break;
      const lead = next.match(/^\s*/)[0].length;
      if (lead < 2 && !sibling && startsBlock(next)) break;
      body.push(next.slice(Math.min(lead, width)));
      i += 1;
    }
    const item = h("li");
    if (body.length === 1 || body.slice(1).every((l) => !startsBlock(l) && !isBlank(l))) {
      body.forEach((text, n) => {
        if (n) item.append(h("br"));
        inline(text.trim(), item);
      });
    } else {
      blocks(body, item, depth + 1);
    }
    el.append(item);
    while (i < lines.length && isBlank(lines[i]) && i + 1 < lines.length && ITEM.test(lines[i + 1])) i += 1;
  }
  parent.append(el);
  return i;
}

function cells(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, parent) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "",
  );
  const row = (values, tag) =>
    h(
      "tr",
      {},
      head.map((_, n) => {
        const cell = h(tag, align[n] ? { class: `align-${align[n]}` } : {});
        inline(values[n] ?? "", cell);
        return cell;
      }),
    );
  const tbody = h("tbody");
  i += 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) tbody.append(row(cells(lines[i++]), "td"));
  parent.append(h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, row(head, "th")), tbody)));
  return i;
}

/** A link element for url, or null if its scheme is not a safe one. */
export function safeLink(url) {
  let parsed;
  try {
    parsed = new URL(url, window.location.href);
  } catch {
    return null;
  }
  if (!SAFE_PROTOCOLS.has(parsed.protocol)) return null;
  const a = h("a", { rel: "noopener noreferrer nofollow", target: "_blank" });
  a.href = parsed.href;
  return a;
}

const ESCAPABLE = /[\\`*_{}[\]()#+\-.!~|<>]/;
const LINK = /^!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+["'][^"']*["'])?\s*\)/;
const AUTOLINK = /^<((?:https?:\/\/|mailto:)[^>\s]+)>/;
const BARE_URL = /^https?:\/\/[^\s<>"]*[^\s<>".,:;'!?)\]}]/;

function inline(text, parent, depth = 0) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);
    if (c === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const close = findRun(text, run, i + run.length);
      if (close >= 0) {
        flush();
        let code = text.slice(i + run.length, close);
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
        parent.append(h("code", {}, code));
        i = close + run.length;
      } else {
        buffer += run;
        i += run.length;
      }
      continue;
    }
    if (depth < MAX_DEPTH) {
      const pair = delimited(text, i);
      if (pair) {
        flush();
        const el = h(pair.tag);
        inline(text.slice(pair.start, pair.end), el, depth + 1);
        parent.append(el);
        i = pair.next;
        continue;
      }
    }
    let m;
    if ((c === "[" || (c === "!" && text[i + 1] === "[")) && (m = LINK.exec(rest))) {
      flush();
      const a = safeLink(m[2]);
      if (a) {
        inline(m[1] || m[2], a, depth + 1);
        parent.append(a);
      } else {
        inline(m[1], parent, depth + 1);
      }
      i += m[0].length;
      continue;
    }
    if (c === "<" && (m = AUTOLINK.exec(rest))) {
      flush();
      const a = safeLink(m[1]);
      parent.append(a ? append1(a, m[1]) : document.createTextNode(m[0]));
      i += m[0].length;
      continue;
    }
    if (c === "h" && !/\w/.test(text[i - 1] || "") && (m = BARE_URL.exec(rest))) {
      flush();
      const a = safeLink(m[0]);
      parent.append(a ? append1(a, m[0]) : document.createTextNode(m[0]));
      i += m[0].length;
      continue;
    }
    buffer += c;
    i += 1;
  }
  flush();
}

function append1(el, text) {
  el.append(document.createTextNode(text));
  return el;
}

function findRun(text, run, from) {
  let at = text.indexOf(run, from);
  while (at >= 0) {
    const before = text[at - 1];
    const after = text[at + run.length];
    if (before !== "`" && after !== "`") return at;
    at = text.indexOf(run, at + 1);
  }
  return -1;
}

const DELIMITERS = [
  ["**", "strong"],
  ["__", "strong"],
  ["~~", "del"],
  ["*", "em"],
  ["_", "em"],
];

function delimited(text, i) {
  for (const [mark, tag] of DELIMITERS) {
    if (!text.startsWith(mark, i)) continue;
    const start = i + mark.length;
    if (start >= text.length || /\s/.test(text[start])) continue;
    if (mark[0] === "_" && /\w/.test(text[i - 1] || "")) continue; // snake_case stays text
    if (mark.length === 1 && text[start] === mark) continue;
    let end = text.indexOf(mark, start + 1);
    while (end >= 0) {
      const ok =
        !/\s/.test(text[end - 1]) &&
        !(mark.length === 1 && text[end + 1] === mark) &&
        !(mark[0] === "_" && /\w/.test(text[end + mark.length] || ""));
      if (ok) break;
      end = text.indexOf(mark, end + 1);
    }
    if (end < 0) continue;
    return { tag, start, end, next: end + mark.length };
  }
  return null;
}
