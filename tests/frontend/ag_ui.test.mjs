// AG-UI (npm `@ag-ui/client`, the HttpAgent CopilotKit uses) against sessionvisor.
// HttpAgent verifies every event it receives (RUN_STARTED first, messages opened
// before their content, nothing after RUN_FINISHED...) and fails the run otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HttpAgent } from '@ag-ui/client';
import { BASE, gate, heartbeatWatcher, newId, stored, until } from './helpers.mjs';

function makeAgent(threadId, user, fetch = undefined) {
  return new HttpAgent({ url: `${BASE}/ag-ui`, headers: { 'X-User': user }, threadId, fetch });
}

/** Add a user message and run; return the events the run delivered. */
async function say(agent, text, parameters = {}) {
  if (text !== null) agent.addMessage({ id: newId('m'), role: 'user', content: text });
  const events = [];
  await agent.runAgent(parameters, { onEvent: ({ event }) => { events.push(event); } });
  return events;
}

const lastAssistant = (agent) => agent.messages.filter((m) => m.role === 'assistant').at(-1);
const customs = (events, name) => events.filter((e) => e.type === 'CUSTOM' && e.name === name);

test('a run streams text messages and finishes; a later run starts with the stored history', async () => {
  const threadId = newId('agui-reply');
  const agent = makeAgent(threadId, 'alice');
  const events = await say(agent, 'hello there');
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'RUN_STARTED');
  assert.equal(types.at(-1), 'RUN_FINISHED');
  assert.ok(!types.includes('MESSAGES_SNAPSHOT'), 'a new conversation has no history to send');
  assert.ok(types.filter((t) => t === 'TEXT_MESSAGE_CONTENT').length > 5, 'the text streams');
  assert.ok(types.indexOf('TEXT_MESSAGE_START') < types.indexOf('TEXT_MESSAGE_END'));
  assert.match(lastAssistant(agent).content, /Hello alice! You said: “hello there”/);

  const again = await say(agent, 'and again');
  assert.ok(again.some((e) => e.type === 'MESSAGES_SNAPSHOT'));
  assert.deepEqual(agent.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
  assert.match(lastAssistant(agent).content, /You said: “and again”/);
  const { body } = await stored(threadId, 'alice');
  assert.deepEqual(
    body.messages.filter((m) => m.role === 'user').map((m) => m.content),
    ['hello there', 'and again'],
  );
});

test('a message sent while a run is active is queued and answered by its own run', async () => {
  const threadId = newId('agui-queue');
  const heartbeats = heartbeatWatcher();
  const first = makeAgent(threadId, 'alice', heartbeats.fetch);
  const second = makeAgent(threadId, 'alice'); // a second tab on the same thread
  await gate('hold');
  try {
    const firstEvents = [];
    first.addMessage({ id: newId('m'), role: 'user', content: 'slow first' });
    const running = first.runAgent({}, { onEvent: ({ event }) => { firstEvents.push(event); } });
    await until(() => customs(firstEvents, 'sessionvisor.StatusChanged')
      .some((e) => e.value.status === 'running'), 'the first run to start its turn');
    const secondEvents = [];
    second.addMessage({ id: newId('m'), role: 'user', content: 'second' });
    const queued = second.runAgent({}, { onEvent: ({ event }) => { secondEvents.push(event); } });
    await until(() => customs(secondEvents, 'sessionvisor.MessageQueued').length > 0,
      'the queued notice');
    // The server's heartbeat comments arrive mid-run; the client must ignore them.
    await until(() => heartbeats.seen, 'a heartbeat on the first run');
    await gate('release');
    await Promise.all([running, queued]);
  } finally {
    await gate('release');
  }
  assert.match(lastAssistant(first).content, /You said: “slow first”/);
  assert.match(lastAssistant(second).content, /You said: “second”/);
});

for (const approve of [true, false]) {
  test(`an interrupt ends the run with an interrupt outcome; resume ${approve ? 'approves' : 'cancels'}`,
    async () => {
      const threadId = newId('agui-interrupt');
      const agent = makeAgent(threadId, 'alice');
      const events = await say(agent, 'please delete the old files');
      const finished = events.at(-1);
      assert.equal(finished.type, 'RUN_FINISHED');
      assert.equal(finished.outcome.type, 'interrupt');
      assert.equal(agent.pendingInterrupts.length, 1);
      const [interrupt] = agent.pendingInterrupts;
      assert.match(interrupt.message, /delete_files/);
      // The interrupt names a tool call the run announced.
      const started = events.filter((e) => e.type === 'TOOL_CALL_START').map((e) => e.toolCallId);
      assert.ok(started.includes(interrupt.toolCallId));
      // ... and the interrupt the conversation stores.
      assert.equal(interrupt.id, (await stored(threadId, 'alice')).body.interrupt.id);

      const resume = approve
        ? [{ interruptId: interrupt.id, status: 'resolved', payload: { approved: true } }]
        : [{ interruptId: interrupt.id, status: 'cancelled' }];
      const after = await say(agent, null, { resume });
      assert.equal(after.at(-1).type, 'RUN_FINISHED');
      assert.ok(!after.at(-1).outcome || after.at(-1).outcome.type === 'success');
      assert.equal(agent.pendingInterrupts.length, 0);
      assert.ok(after.some((e) => e.type === 'TOOL_CALL_RESULT' && e.toolCallId === interrupt.toolCallId));
      assert.match(lastAssistant(agent).content, approve ? /Approved: I ran delete_files/ : /Denied/);
      assert.equal((await stored(threadId, 'alice')).body.status, 'idle');
    });
}

test('a crash ends the run with RUN_ERROR; the restarted agent answers the next run', async () => {
  const threadId = newId('agui-crash');
  const agent = makeAgent(threadId, 'alice');
  await say(agent, 'hello');
  const errors = [];
  agent.addMessage({ id: newId('m'), role: 'user', content: 'now crash please' });
  await agent.runAgent({}, { onRunErrorEvent: ({ event }) => { errors.push(event); } });
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /crashed on purpose/);
  await say(agent, 'are you back');
  assert.match(lastAssistant(agent).content, /You said: “are you back”/);
  const { body } = await stored(threadId, 'alice');
  assert.ok(body.messages.some((m) => m.role === 'system' && /restarted/.test(m.content)));
});

test("another owner's thread is refused; a run with nothing to answer is a 400", async () => {
  const threadId = newId('agui-owner');
  await say(makeAgent(threadId, 'alice'), 'mine');
  const bob = makeAgent(threadId, 'bob');
  bob.addMessage({ id: newId('m'), role: 'user', content: 'let me in' });
  await assert.rejects(bob.runAgent(), (error) => error.status === 404);
  assert.equal((await stored(threadId, 'alice')).body.messages.length, 2);

  const bad = await fetch(`${BASE}/ag-ui`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'X-User': 'alice' },
    body: JSON.stringify({ threadId, runId: 'r', messages: [] }),
  });
  assert.equal(bad.status, 400);
  const notInput = await fetch(`${BASE}/ag-ui`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'X-User': 'alice' },
    body: JSON.stringify({ thread: threadId }),
  });
  assert.equal(notInput.status, 400);
  assert.equal((await notInput.json()).error, 'ValidationError');
});
