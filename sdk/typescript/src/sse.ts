/**
 * A parser for `text/event-stream` (the HTML standard's server-sent events), as served by
 * `GET /exports/{id}/events`.
 */

export interface ServerSentEvent {
  /** `event:` field; `message` when the server sent none. */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The last `id:` seen (it carries over to later events, as in EventSource). */
  id: string;
  /** `retry:` in milliseconds, when this event had one. */
  retry?: number;
}

/**
 * Parse a stream of chunks (bytes or text) into events. Handles `\n`, `\r\n` and `\r`
 * line ends split anywhere across chunks, multi-line data, comments (`:`), a leading
 * byte-order mark, and ignores an unterminated event at the end of the stream.
 */
export async function* parseSSE(
  chunks: AsyncIterable<Uint8Array | string>,
): AsyncGenerator<ServerSentEvent, void, undefined> {
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let first = true;
  let event = '';
  let data: string[] = [];
  let hasData = false;
  let lastId = '';
  let retry: number | undefined;

  function* lines(final: boolean): Generator<string> {
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buffer);
      if (m === null) break;
      // A lone '\r' at the very end may be the first half of '\r\n': wait for more.
      if (m[0] === '\r' && m.index === buffer.length - 1 && !final) break;
      yield buffer.slice(0, m.index);
      buffer = buffer.slice(m.index + m[0].length);
    }
  }

  function* feed(line: string): Generator<ServerSentEvent> {
    if (line === '') {
      if (hasData) {
        const ev: ServerSentEvent = { event: event || 'message', data: data.join('\n'), id: lastId };
        if (retry !== undefined) ev.retry = retry;
        yield ev;
      }
      event = '';
      data = [];
      hasData = false;
      retry = undefined;
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        event = value;
        break;
      case 'data':
        data.push(value);
        hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) lastId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) retry = Number(value);
        break;
      default:
        break;
    }
  }

  for await (const chunk of chunks) {
    buffer += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    if (first && buffer.length > 0) {
      if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1);
      first = false;
    }
    for (const line of lines(false)) yield* feed(line);
  }
  buffer += decoder.decode();
  for (const line of lines(true)) yield* feed(line);
}

/** The chunks of a fetch response body (a WHATWG ReadableStream), released on exit. */
export async function* readBody(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      if (value !== undefined) yield value;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
