// AG-UI's HttpAgent (the client CopilotKit uses) against sessionvisor.
//
//   python -m sessionvisor demo                 # in one terminal
//   npm install && node ag_ui_client.mjs        # in this directory
//
// CopilotKit's runtime takes the same agent: new HttpAgent({ url: `${BASE}/ag-ui` }).
import { randomUUID } from 'node:crypto';
import { HttpAgent } from '@ag-ui/client';

const BASE = process.env.SESSIONVISOR_URL ?? 'http://127.0.0.1:8000';
const HEADERS = process.env.SESSIONVISOR_TOKEN
  ? { Authorization: `Bearer ${process.env.SESSIONVISOR_TOKEN}` }
  : { 'X-User': 'alice' };

const agent = new HttpAgent({
  url: `${BASE}/ag-ui`,
  headers: HEADERS,
  threadId: `ag-ui-${randomUUID()}`, // the conversation id on the server
});

const printer = {
  onTextMessageContentEvent: ({ event }) => { process.stdout.write(event.delta); },
  onToolCallStartEvent: ({ event }) => { console.log(`\n  tool call ${event.toolCallName}`); },
  onCustomEvent: ({ event }) => {
    if (event.name === 'sessionvisor.StatusChanged') console.log(`\n  [${event.value.status}]`);
  },
  onRunErrorEvent: ({ event }) => { console.log(`\n  run failed: ${event.message}`); },
};

async function say(text) {
  console.log(`\nyou: ${text}`);
  agent.addMessage({ id: randomUUID(), role: 'user', content: text });
  process.stdout.write('agent: ');
  await agent.runAgent({}, printer);
}

await say('Hello from AG-UI');
await say('please delete my old files');

// The run ended with an interrupt outcome: answer it in the next run's `resume`.
for (const interrupt of agent.pendingInterrupts) {
  console.log(`\n  interrupt: ${interrupt.message} -> approving`);
}
const resume = agent.pendingInterrupts.map((interrupt) => ({
  interruptId: interrupt.id,
  status: 'resolved',
  payload: { approved: true },
}));
process.stdout.write('agent: ');
await agent.runAgent({ resume }, printer);
console.log(`\n\n${agent.messages.length} messages in the thread; pending interrupts: ${agent.pendingInterrupts.length}`);
