// Shared by the Node tests: the server's address, ids, and waiting for a condition.
import { randomUUID } from 'node:crypto';

export const BASE = process.env.SESSIONVISOR_URL;
if (!BASE) {
  throw new Error('SESSIONVISOR_URL is not set: pytest (tests/frontend/test_node_clients.py) sets it');
}

export const newId = (prefix) => `${prefix}-${randomUUID()}`;

/** Wait until `predicate()` is true (checked every 5 ms), failing after `ms`. */
export async function until(predicate, label, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Close or open the gate slow turns wait at (a route only the test server has). */
export async function gate(action) {
  const response = await fetch(`${BASE}/_test/${action}`, { method: 'POST' });
  if (!response.ok) throw new Error(`gate ${action}: HTTP ${response.status}`);
}

/** The stored conversation, as the native route shows it. */
export async function stored(conversationId, user) {
  const response = await fetch(`${BASE}/conversations/${encodeURIComponent(conversationId)}`, {
    headers: { 'X-User': user },
  });
  return { status: response.status, body: await response.json() };
}

/** A fetch that notes whether a response carried an SSE comment line (a heartbeat). */
export function heartbeatWatcher() {
  const watcher = { seen: false };
  watcher.fetch = async (url, init) => {
    const response = await fetch(url, init);
    if (!response.body) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
      const decoder = new TextDecoder();
      for await (const piece of mine) {
        if (/(^|\n):/.test(decoder.decode(piece, { stream: true }))) watcher.seen = true;
      }
    })().catch(() => {});
    return new Response(theirs, { status: response.status, headers: response.headers });
  };
  return watcher;
}
