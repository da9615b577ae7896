// The Vercel AI SDK (npm `ai` v6) against sessionvisor: `useChat`'s engine without React,
// that is AbstractChat with a small ChatState and the stock DefaultChatTransport.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AbstractChat, DefaultChatTransport } from 'ai';
import { BASE, gate, newId, stored, until } from './helpers.mjs';

class ChatState {
  constructor() {
    this.status = 'ready';
    this.error = undefined;
    this.messages = [];
  }
  pushMessage = (message) => { this.messages = this.messages.concat(message); };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

/** A fetch that also records, per request, the status, headers and chunk types it streamed. */
function recordingFetch(requests) {
  return async (url, init) => {
    const response = await fetch(url, init);
    const record = { method: init?.method ?? 'GET', url: String(url), status: response.status,
      headers: response.headers, chunks: [] };
    requests.push(record);
    if (!response.body || response.status !== 200) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const piece of mine) {
        buffer += decoder.decode(piece, { stream: true });
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of frame.split('\n')) {
            if (line.startsWith(':')) record.chunks.push(':comment');
            if (!line.startsWith('data: ')) continue;
            const data = line.slice(6);
            record.chunks.push(data === '[DONE]' ? '[DONE]' : JSON.parse(data).type);
          }
        }
      }
    })().catch(() => {});
    return new Response(theirs, { status: response.status, headers: response.headers });
  };
}

function makeChat(id, user) {
  const requests = [];
  const data = [];
  const chat = new AbstractChat({
    id,
    state: new ChatState(),
    transport: new DefaultChatTransport({
      api: `${BASE}/ai-sdk/chat`,
      headers: { 'X-User': user },
      fetch: recordingFetch(requests),
    }),
    onData: (part) => data.push(part),
  });
  return { chat, requests, data };
}

const textOf = (message) =>
  message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
const statuses = (data) => data.filter((d) => d.type === 'data-status').map((d) => d.data.status);
const toolPart = (message) => message.parts.find((p) => p.type.startsWith('tool-'));

test('a reply streams as text parts the client accepts; only the new message is sent', async () => {
  const id = newId('ai-reply');
  const { chat, requests, data } = makeChat(id, 'alice');
  await chat.sendMessage({ text: 'hello there' });
  assert.equal(chat.status, 'ready', String(chat.error));
  assert.equal(chat.messages.length, 2);
  assert.equal(chat.messages[1].role, 'assistant');
  assert.match(textOf(chat.messages[1]), /Hello alice! You said: “hello there”/);

  const post = requests[0];
  assert.equal(post.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  await until(() => post.chunks.at(-1) === '[DONE]', 'the end of the recorded stream');
  const kinds = post.chunks.filter((k) => !k.startsWith('data-') && k !== ':comment');
  assert.deepEqual(kinds.slice(0, 3), ['start', 'start-step', 'text-start']);
  assert.deepEqual(kinds.slice(-4), ['text-end', 'finish-step', 'finish', '[DONE]']);
  assert.ok(kinds.filter((k) => k === 'text-delta').length > 5, 'the text arrives in pieces');
  assert.ok(statuses(data).includes('running') && statuses(data).includes('idle'));

  // The client sends its whole copy again; the server takes only the newest message.
  await chat.sendMessage({ text: 'and again' });
  assert.equal(chat.status, 'ready', String(chat.error));
  assert.match(textOf(chat.messages[3]), /You said: “and again”/);
  const { body } = await stored(id, 'alice');
  assert.deepEqual(
    body.messages.filter((m) => m.role === 'user').map((m) => m.content),
    ['hello there', 'and again'],
  );
});

test('a message sent while a turn runs is queued and answered in the next stream', async () => {
  await gate('hold');
  const { chat, data, requests } = makeChat(newId('ai-queue'), 'alice');
  try {
    const first = chat.sendMessage({ text: 'slow first' });
    await until(() => statuses(data).includes('running'), 'the first turn to run');
    const second = chat.sendMessage({ text: 'second' });
    await until(() => data.some((d) => d.type === 'data-queued'), 'the queued notice');
    // The server's heartbeat comments arrive mid-stream; the client must ignore them.
    await until(() => requests[0].chunks.includes(':comment'), 'a heartbeat on the first stream');
    await gate('release');
    await Promise.all([first, second]);
  } finally {
    await gate('release');
  }
  assert.equal(chat.error, undefined, String(chat.error));
  assert.deepEqual(chat.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
  assert.match(textOf(chat.messages[1]), /You said: “slow first”/);
  assert.match(textOf(chat.messages[3]), /You said: “second”/);
});

for (const approved of [true, false]) {
  test(`an interrupt is a tool approval; ${approved ? 'approving' : 'denying'} it resumes`, async () => {
    const id = newId('ai-approval');
    const { chat } = makeChat(id, 'alice');
    await chat.sendMessage({ text: 'please delete the old files' });
    assert.equal(chat.status, 'ready', String(chat.error));
    const asking = chat.messages[1];
    const part = toolPart(asking);
    assert.equal(part.type, 'tool-sessionvisor_interrupt');
    assert.equal(part.state, 'approval-requested');
    assert.match(part.input.question, /delete_files/);
    assert.match(textOf(asking), /I will not run it without your approval/);
    const { body } = await stored(id, 'alice');
    assert.equal(body.status, 'interrupted');
    assert.equal(part.approval.id, body.interrupt.id, 'the approval id is the interrupt id');

    await chat.addToolApprovalResponse({ id: part.approval.id, approved });
    await chat.sendMessage(); // sends the approval: a resume on the server
    assert.equal(chat.status, 'ready', String(chat.error));
    assert.equal(chat.messages.length, 2, 'the answer continues the same assistant message');
    const answered = chat.messages[1];
    assert.equal(toolPart(answered).state, approved ? 'output-available' : 'output-denied');
    assert.match(textOf(answered), approved ? /Approved: I ran delete_files/ : /Denied/);
    assert.equal((await stored(id, 'alice')).body.status, 'idle');
  });
}

test('resumeStream replays the running turn after the client dropped it; 204 when idle', async () => {
  const id = newId('ai-resume');
  await gate('hold');
  try {
    const first = makeChat(id, 'alice');
    const sending = first.chat.sendMessage({ text: 'slow story' });
    await until(() => statuses(first.data).includes('running'), 'the turn to run');
    await first.chat.stop(); // the page went away mid-turn
    await sending;

    const again = makeChat(id, 'alice'); // a new page for the same chat
    const resuming = again.chat.resumeStream();
    await until(() => again.requests.length === 1, 'the reconnect request');
    await until(() => statuses(again.data).includes('running'), 'the replayed turn');
    await gate('release');
    await resuming;
    assert.equal(again.chat.status, 'ready', String(again.chat.error));
    assert.equal(again.requests[0].method, 'GET');
    assert.equal(again.requests[0].status, 200);
    assert.equal(again.chat.messages.length, 1);
    assert.match(textOf(again.chat.messages[0]), /^Hello alice! You said: “slow story”/);

    await again.chat.resumeStream(); // nothing runs now
    assert.equal(again.requests[1].status, 204);
    assert.equal(again.chat.status, 'ready');
    assert.equal(again.chat.messages.length, 1);
  } finally {
    await gate('release');
  }
});

test('a crash fails the turn; the restarted agent answers the next message', async () => {
  const id = newId('ai-crash');
  const { chat } = makeChat(id, 'alice');
  await chat.sendMessage({ text: 'hello' });
  await chat.sendMessage({ text: 'now crash please' });
  assert.equal(chat.status, 'error');
  assert.match(chat.error.message, /crashed on purpose/);
  await chat.sendMessage({ text: 'are you back' });
  assert.equal(chat.status, 'ready', String(chat.error));
  assert.match(textOf(chat.messages.at(-1)), /You said: “are you back”/);
  const { body } = await stored(id, 'alice');
  assert.ok(body.messages.some((m) => m.role === 'system' && /restarted/.test(m.content)));
});

test("another owner's conversation is refused; a bad body is a 400", async () => {
  const id = newId('ai-owner');
  const alice = makeChat(id, 'alice');
  await alice.chat.sendMessage({ text: 'mine' });
  const bob = makeChat(id, 'bob');
  await bob.chat.sendMessage({ text: 'let me in' });
  assert.equal(bob.chat.status, 'error');
  assert.equal(bob.requests[0].status, 404);
  assert.match(bob.chat.error.message, /NotFound/);
  bob.chat.clearError();
  await bob.chat.resumeStream();
  // The resume stream answers as it does for an id nobody uses: it must not tell bob
  // that alice's conversation exists.
  assert.equal(bob.requests[1].status, 204);
  const nobody = await fetch(`${BASE}/ai-sdk/chat/${newId('ai-unknown')}/stream`, {
    headers: { 'X-User': 'bob' },
  });
  assert.equal(nobody.status, 204);
  assert.equal((await stored(id, 'alice')).body.messages.length, 2);

  const bad = await fetch(`${BASE}/ai-sdk/chat`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'X-User': 'alice' },
    body: JSON.stringify({ id, messages: [] }),
  });
  assert.equal(bad.status, 400);
  assert.equal((await bad.json()).error, 'ValidationError');
});

test('regenerate() answers the last message again; the old answer leaves the stored history', async () => {
  const id = newId('ai-regenerate');
  const { chat } = makeChat(id, 'alice');
  await chat.sendMessage({ text: 'tell me something' });
  assert.equal(chat.status, 'ready', String(chat.error));
  const before = await stored(id, 'alice');
  const oldReply = before.body.messages.find((m) => m.role === 'assistant');

  await chat.regenerate();
  assert.equal(chat.status, 'ready', String(chat.error));
  assert.equal(chat.messages.length, 2);
  assert.match(textOf(chat.messages[1]), /You said: “tell me something”/);

  const { body } = await stored(id, 'alice');
  assert.deepEqual(body.messages.map((m) => m.role), ['user', 'assistant']);
  assert.notEqual(body.messages[1].id, oldReply.id);
  assert.equal(body.messages[0].metadata.regenerates, before.body.messages[0].id);

  // The client keeps its id for the user message: a second regenerate still finds it.
  await chat.regenerate();
  assert.equal(chat.status, 'ready', String(chat.error));
  const again = await stored(id, 'alice');
  assert.equal(again.body.messages.length, 2);
});

test('an edit (sendMessage with the messageId of the user message) answers the new text', async () => {
  const id = newId('ai-edit');
  const { chat } = makeChat(id, 'alice');
  await chat.sendMessage({ text: 'first question' });
  await chat.sendMessage({ text: 'second question' });
  assert.equal(chat.status, 'ready', String(chat.error));
  const edited = chat.messages[2];
  assert.equal(edited.role, 'user');

  await chat.sendMessage({ text: 'a better question', messageId: edited.id });
  assert.equal(chat.status, 'ready', String(chat.error));
  assert.equal(chat.messages.length, 4);
  assert.match(textOf(chat.messages[3]), /You said: “a better question”/);

  const { body } = await stored(id, 'alice');
  assert.deepEqual(
    body.messages.filter((m) => m.role === 'user').map((m) => m.content),
    ['first question', 'a better question'],
  );
  assert.equal(body.messages.length, 4);
  assert.equal(body.messages[2].metadata.edits, edited.id);
});
