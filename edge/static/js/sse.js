// A server-sent events parser (the WHATWG rules) for fetch() response bodies, so a POST can be
// read as a stream: EventSource only does GET.

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.lastEventId = "";
    this.sawId = false;
  }

  /** Feed decoded text; returns the events completed by it. */
  feed(text) {
    this.buffer += text;
    const events = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (match === null) break;
      // A lone "\r" at the very end may be the first half of "\r\n": wait for more.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  /** The end of the body: an unterminated last event is dropped, as browsers do. */
  end() {
    this.buffer = "";
    this.data = [];
    this.event = "";
    return [];
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return null;
      }
      const event = {
        type: this.event || "message",
        data: this.data.join("\n"),
        id: this.lastEventId,
        hasId: this.sawId,
      };
      this.data = [];
      this.event = "";
      return event;
    }
    if (line.startsWith(":")) return null; // a comment (keep-alive)
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
    }
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) {
      this.lastEventId = value;
      this.sawId = true;
    }
    return null;
  }
}

/** Yield the events of a fetch() Response body as they arrive. */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.feed(decoder.decode(value, { stream: true }))) yield event;
    }
    for (const event of parser.feed(decoder.decode())) yield event;
    parser.end();
  } finally {
    reader.releaseLock();
  }
}
