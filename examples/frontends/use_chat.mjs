// The Vercel AI SDK's chat engine (what React's useChat runs) against sessionvisor.
//
//   python -m sessionvisor demo            # in one terminal
//   npm install && node use_chat.mjs       # in this directory
//
// No React and no build step: AbstractChat is useChat's engine, ChatState is the
// little store useChat keeps in React state, DefaultChatTransport is the stock one.
// The only sessionvisor-specific line is the `api` URL.
import { randomUUID } from 'node:crypto';
import { AbstractChat, DefaultChatTransport } from 'ai';

const BASE = process.env.SESSIONVISOR_URL ?? 'http://127.0.0.1:8000';
// The demo server trusts an X-User header; a real one verifies a token instead
// (python -m sessionvisor serve ... --jwt-secret-file F): send `Authorization: Bearer ...`.
const HEADERS = process.env.SESSIONVISOR_TOKEN
  ? { Authorization: `Bearer ${process.env.SESSIONVISOR_TOKEN}` }
  : { 'X-User': 'alice' };

class ChatState {
  status = 'ready';
  error = undefined;
  messages = [];
  pushMessage = (message) => { this.messages = [...this.messages, message]; this.show(message); };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (index, message) => {
    this.messages = this.messages.map((m, i) => (i === index ? message : m));
    this.show(message);
  };
  snapshot = (thing) => structuredClone(thing);

  // Print the assistant's text as it grows (what a UI would re-render).
  printed = new Map();
  show(message) {
    if (message.role !== 'assistant') return;
    const text = message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
    const before = this.printed.get(message.id) ?? '';
    if (text.startsWith(before)) process.stdout.write(text.slice(before.length));
    this.printed.set(message.id, text);
  }
}

const chat = new AbstractChat({
  id: `use-chat-${randomUUID()}`, // the conversation id on the server
  state: new ChatState(),
  transport: new DefaultChatTransport({ api: `${BASE}/ai-sdk/chat`, headers: HEADERS }),
  // Status changes, queueing and restarts arrive as transient data parts.
  onData: (part) => {
    if (part.type === 'data-status') process.stdout.write(`\n  [${part.data.status}]\n`);
  },
});

async function say(text) {
  console.log(`\nyou: ${text}`);
  process.stdout.write('agent: ');
  await chat.sendMessage({ text });
  if (chat.error) throw chat.error;
}

await say('Hello from useChat');

// The demo agent asks before it "deletes" anything: an interrupt, which the SDK
// shows as a tool call waiting for approval.
await say('please delete my old files');
const waiting = chat.messages.at(-1).parts.find((p) => p.state === 'approval-requested');
console.log(`\n  approval asked for ${waiting.type}: ${waiting.input.question}`);
await chat.addToolApprovalResponse({ id: waiting.approval.id, approved: true });
process.stdout.write('agent: ');
await chat.sendMessage(); // sends the approval: the server resumes the agent
if (chat.error) throw chat.error;
const answered = chat.messages.at(-1).parts.find((p) => p.type === waiting.type);
console.log(`\n  the tool call is now ${answered.state}`);
