"""The checker: guarantees verified from a recorded history and the final states.

What it checks (each violation names its ``kind``):

- ``lost-message``: an acknowledged (2xx) send is missing from the final history.
- ``duplicate-message``: a message id appears more than once.
- ``phantom-message``: a user message nobody sent (unknown id or other content),
  or one whose every send was refused (4xx) or never reached the server.
- ``order``: the order of a conversation's commands is the order they were
  acknowledged in. Send A acknowledged before send B was first invoked comes
  before B in the final history, and no read shows B without A. A read that
  shows the conversation ``cancelled`` holds no message sent after every
  cancel that may have cut it was acknowledged. A question that a read showed
  pending, then a send acknowledged before any answer to it was sent, ends
  superseded by that send (not approved or denied: the answer came after it).
- ``unknown-after-ack``: a command acknowledged, then its conversation answered
  404 (unknown); in one process also a read invoked after a send's
  acknowledgement that does not show that message.
- ``unanswered``: a user message with no reply after the settle phase.
- ``answered-twice`` / ``reply-to-nothing`` / ``reply-mismatch``: the demo agent
  answers the user messages since its last reply with one reply quoting them
  all; a message quoted twice, a reply with nothing to answer, or a reply
  quoting other messages than the ones it answers.
- ``bad-outcome``: an Approved/Denied reply with no open question, or the
  wrong number of tool runs for it, or an outcome no answer naming that
  question (by its interrupt id) asked for.
- ``duplicate-output``: an assistant or tool message id stored twice.
- ``lost-answer``: an acknowledged resume whose question was seen pending again
  later, or whose question ended without the approved/denied outcome it asked
  for (excused when a cancel or stop of the conversation may have cut its turn).
- ``not-settled``: after the faults stopped, a conversation still ran or held
  queued or unanswered work that no cancel, stop or pending question explains
  (``quiesce``: lease TTL + 5 s in a cluster, by default), or it
  did not reach idle with everything answered once the client resolved what was
  pending (``settle``), or its status is ``error``.
- ``server-died`` / ``start-failed``: a process exited without the nemesis, or
  did not become ready after a restart.
- ``internal-error``: a 500 answer.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Op", "Violation", "check", "format_violation", "load", "main"]

Event = dict[str, Any]
_QUOTE = re.compile(r"You said: “(.*)”\.", re.S)
_QUESTION = "That needs the dangerous tool"
_INF = float("inf")


@dataclass
class Op:
    """One logical operation and its attempts."""

    op: int
    f: str
    cid: str
    process: str
    invokes: list[Event] = field(default_factory=list)
    completions: list[Event] = field(default_factory=list)

    @property
    def first_t(self) -> float:
        return float(self.invokes[0]["t"]) if self.invokes else _INF

    @property
    def ack(self) -> Event | None:
        return next((e for e in self.completions if e["type"] == "ok"), None)

    @property
    def result(self) -> str:
        """ok (some attempt acknowledged), fail (none can have applied) or info (unknown)."""
        if self.ack is not None:
            return "ok"
        if any(e["type"] == "info" for e in self.completions):
            return "info"
        if len(self.completions) < len(self.invokes):  # the run ended mid-attempt
            return "info"
        return "fail"

    @property
    def value(self) -> dict[str, Any]:
        source = self.ack or (self.invokes[-1] if self.invokes else {})
        return dict(source.get("value") or {})


@dataclass
class Violation:
    kind: str
    cid: str | None
    detail: str
    ops: list[int] = field(default_factory=list)
    around: tuple[float, float] | None = None


def load(path: Path) -> list[Event]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _ops(events: Iterable[Event]) -> dict[int, Op]:
    ops: dict[int, Op] = {}
    for event in events:
        if "op" not in event or event.get("process") == "nemesis" or event["type"] == "final":
            continue
        op = ops.setdefault(
            event["op"], Op(event["op"], event["f"], event["cid"], event["process"])
        )
        (op.invokes if event["type"] == "invoke" else op.completions).append(event)
    return ops


def _classify(text: str) -> str:
    if text.startswith(_QUESTION):
        return "question"
    if text.startswith("Approved:"):
        return "approved"
    if text.startswith("Denied:"):
        return "denied"
    return "reply"


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


@dataclass
class _Question:
    index: int
    outcome: str | None = None  # approved | denied | superseded
    tools: int = 0
    superseded_by: str | None = None  # the id of the user message that superseded it


class _Conversation:
    """The checks on one conversation."""

    def __init__(
        self, cid: str, ops: list[Op], final: Event | None, events: list[Event], *, cluster: bool
    ) -> None:
        self.cid = cid
        self.cluster = cluster
        self.ops = ops
        self.final = final
        self.events = events
        self.violations: list[Violation] = []
        self.sends = [o for o in ops if o.f == "send"]
        self.by_id: dict[str, list[Op]] = defaultdict(list)
        for send in self.sends:
            self.by_id[str(send.value.get("id"))].append(send)
        body = final.get("value") if final else None
        self.messages: list[dict[str, Any]] = list(body.get("messages") or []) if body else []
        self.status = body.get("status") if body else None
        self.questions: dict[str, _Question] = {}
        self.answered: Counter[str] = Counter()
        self.position: dict[str, int] = {}

    def add(self, kind: str, detail: str, ops: Sequence[Op] = (), **kw: Any) -> None:
        self.violations.append(Violation(kind, self.cid, detail, [o.op for o in ops], **kw))

    def run(self) -> list[Violation]:
        self.check_ids()
        self.check_order()
        self.walk()
        self.check_resumes()
        self.check_reads()
        self.check_cancels()
        self.check_answer_order()
        self.check_unknown()
        self.check_quiesce()
        self.check_settle()
        return self.violations

    def check_ids(self) -> None:
        counts: Counter[str] = Counter()
        for index, message in enumerate(self.messages):
            if message.get("role") != "user":
                continue
            mid = str(message.get("id"))
            counts[mid] += 1
            self.position.setdefault(mid, index)
            sends = self.by_id.get(mid)
            if not sends:
                self.add("phantom-message", f"user message {mid!r} was never sent: {message!r}")
                continue
            if _text(message) != sends[0].value.get("content"):
                self.add(
                    "phantom-message",
                    f"message {mid!r} holds {_text(message)!r}, "
                    f"sent {sends[0].value.get('content')!r}",
                    sends,
                )
            if all(s.result == "fail" for s in sends):
                self.add(
                    "phantom-message",
                    f"message {mid!r} is stored but every send was refused",
                    sends,
                )
        for mid, count in counts.items():
            if count > 1:
                self.add(
                    "duplicate-message", f"{mid!r} appears {count} times", self.by_id.get(mid, [])
                )
        outputs = Counter(
            str(m.get("id")) for m in self.messages if m.get("role") in ("assistant", "tool")
        )
        for mid, count in outputs.items():
            if count > 1:
                self.add("duplicate-output", f"output message {mid!r} is stored {count} times")
        if self.final is None:
            return
        for send in self.sends:
            mid = str(send.value.get("id"))
            if send.result == "ok" and mid not in counts:
                self.add(
                    "lost-message",
                    f"acknowledged send {mid!r} (ok at t={send.ack['t'] if send.ack else '?'}) "
                    "is not in the final history",
                    [send],
                )

    def check_order(self) -> None:
        acked = [s for s in self.sends if s.ack is not None and str(s.value["id"]) in self.position]
        for a in acked:
            for b in acked:
                assert a.ack is not None
                if a is b or float(a.ack["t"]) >= b.first_t:
                    continue
                pa, pb = self.position[str(a.value["id"])], self.position[str(b.value["id"])]
                if pa > pb:
                    self.add(
                        "order",
                        f"{a.value['id']!r} was acknowledged at t={a.ack['t']} before "
                        f"{b.value['id']!r} was first sent (t={b.first_t}), but it is at "
                        f"position {pa}, after {pb}",
                        [a, b],
                    )

    def walk(self) -> None:
        pending: list[dict[str, Any]] = []
        open_question: str | None = None
        for index, message in enumerate(self.messages):
            role = message.get("role")
            mid = str(message.get("id"))
            if role == "user":
                pending.append(message)
                if open_question is not None:
                    self.questions[open_question].outcome = "superseded"
                    self.questions[open_question].superseded_by = mid
                    open_question = None
            elif role == "tool":
                if open_question is None:
                    self.add("bad-outcome", f"tool message {mid} at {index} with no open question")
                else:
                    self.questions[open_question].tools += 1
            elif role == "system":
                self.add("unexpected-system", f"system message at {index}: {_text(message)!r}")
                pending = []
            elif role == "assistant":
                kind = _classify(_text(message))
                if kind in ("approved", "denied"):
                    if open_question is None:
                        self.add(
                            "bad-outcome",
                            f"{kind} reply {mid} at {index} answers no open question",
                        )
                        continue
                    question = self.questions[open_question]
                    question.outcome = kind
                    want = 1 if kind == "approved" else 0
                    if question.tools != want:
                        resumes = [
                            o
                            for o in self.ops
                            if o.f == "resume" and o.value.get("question") == open_question
                        ]
                        self.add(
                            "bad-outcome",
                            f"question {open_question}: {kind} after {question.tools} tool runs "
                            f"(acknowledged resumes: "
                            f"{[o.value.get('answer') for o in resumes if o.ack]})",
                            resumes,
                        )
                    open_question = None
                    continue
                ids = [str(m.get("id")) for m in pending]
                if not pending:
                    self.add("reply-to-nothing", f"{kind} {mid} at {index} answers no message")
                elif kind == "reply":
                    quoted = _QUOTE.search(_text(message))
                    expected = " / ".join(_text(m) for m in pending)
                    if quoted is None or quoted.group(1) != expected:
                        self.add(
                            "reply-mismatch",
                            f"reply {mid} at {index} quotes "
                            f"{quoted.group(1) if quoted else None!r}, expected {expected!r}",
                            [o for i in ids for o in self.by_id.get(i, [])],
                        )
                elif not any("delete" in _text(m) for m in pending):
                    self.add("reply-mismatch", f"question {mid} at {index} for {ids}")
                for i in ids:
                    self.answered[i] += 1
                pending = []
                if kind == "question":
                    open_question = mid
                    self.questions[mid] = _Question(index)
        for mid, count in self.answered.items():
            if count > 1:
                self.add(
                    "answered-twice", f"{mid!r} answered {count} times", self.by_id.get(mid, [])
                )
        if self.final is not None and open_question is not None:
            self.add("not-settled", f"after the settle phase question {open_question} is pending")
        if self.final is not None and pending:
            ids = [str(m.get("id")) for m in pending]
            self.add(
                "unanswered",
                f"after the settle phase (status {self.status}) no reply for {ids}",
                [o for i in ids for o in self.by_id.get(i, [])],
            )

    def _cut(self, start: float, end: float) -> list[Op]:
        """Cancels and stops that may have cut a turn between start and end."""
        return [
            o
            for o in self.ops
            if o.f in ("cancel", "stop") and o.result != "fail" and start < o.first_t < end
        ]

    def _reads(self) -> list[tuple[float, dict[str, Any], Op]]:
        found = []
        for op in self.ops:
            if op.f == "read" and op.ack is not None and isinstance(op.ack.get("body"), dict):
                found.append((op.first_t, op.ack["body"], op))
        return sorted(found, key=lambda r: r[0])

    def check_resumes(self) -> None:
        """An acknowledged answer takes effect, once.

        In one process a 202 means the answer was applied (the resume turn
        started), so the question must never be seen pending again. In a
        cluster a 202 from a node that does not serve the conversation means
        the answer is stored in the inbox: the question may still be seen
        until the owner applies it (and in the stored state a node that does
        not serve the conversation shows), a second answer to the same question
        is refused by the owner, and the first acknowledged answer decides.
        """
        reads = self._reads()
        answered: set[str] = set()
        resumes = sorted(
            (o for o in self.ops if o.f == "resume" and o.ack is not None),
            key=lambda o: float(o.ack["t"]) if o.ack else _INF,
        )
        for op in resumes:
            assert op.ack is not None
            ack_t = float(op.ack["t"])
            key = str(op.ack["value"].get("question"))
            answer = op.ack["value"].get("answer")
            want = "approved" if answer == "yes" else "denied"
            if self.cluster and key in answered:
                continue  # the owner refuses it: the first answer decides
            answered.add(key)
            done_t = next(
                (t for t, seen, _ in reads if t > ack_t and seen.get("status") == "idle"), _INF
            )
            since = ack_t
            if self.cluster:  # pending again only once it was seen answered
                since = next(
                    (t for t, seen, _ in reads if t > ack_t and seen.get("question") != key),
                    _INF,
                )
            again = next(
                (
                    (t, seen, r)
                    for t, seen, r in reads
                    if t > since
                    and seen.get("question") == key
                    # in a cluster only a live session's view counts: a node that does not
                    # serve the conversation shows the stored state, which may lag
                    and (not self.cluster or seen.get("status") == "interrupted")
                ),
                None,
            )
            if again is not None and not self._cut(op.first_t, again[0]):
                self.add(
                    "lost-answer",
                    f"resume {answer!r} of question {key} acknowledged at t={ack_t}, "
                    f"but the question is pending again at t={again[0]} (read op {again[2].op})",
                    [op, again[2]],
                    around=(op.first_t - 1.0, again[0] + 0.5),
                )
                continue
            if self.final is None or self._cut(op.first_t, done_t):
                continue
            question = self.questions.get(key)
            if question is None:
                self.add(
                    "lost-answer", f"question {key} answered {answer!r} is not in the history", [op]
                )
            elif question.outcome != want and not (
                self.cluster
                and question.outcome == "superseded"
                and self._message_went_first(op, key)
            ):
                self.add(
                    "lost-answer",
                    f"resume {answer!r} of question {key} acknowledged at t={ack_t}, "
                    f"but the question ended {question.outcome!r}",
                    [op],
                    around=(op.first_t - 1.0, ack_t + 5.0),
                )

    def _message_went_first(self, op: Op, key: str) -> bool:
        """The message that superseded the question was acknowledged before this
        answer was first sent: it took effect first, and the answer found nothing
        to answer (in a cluster the answer's 202 only meant "stored", and the owner
        applies both in acknowledgement order)."""
        question = self.questions.get(key)
        by = None if question is None else question.superseded_by
        found = self._acked_sends().get(by) if by is not None else None
        return found is not None and found[1] < op.first_t

    def _acked_sends(self) -> dict[str, tuple[float, float, Op]]:
        """By message id: (first invoke of any of its sends, earliest acknowledgement, that op)."""
        found: dict[str, tuple[float, float, Op]] = {}
        for mid, sends in self.by_id.items():
            acks = [(float(o.ack["t"]), o) for o in sends if o.ack is not None]
            if acks:
                ack_t, op = min(acks, key=lambda a: a[0])
                found[mid] = (min(o.first_t for o in sends), ack_t, op)
        return found

    def check_reads(self) -> None:
        """No read shows a message without one acknowledged before it was first sent.

        In one process, a read invoked after a send was acknowledged shows that
        message (``unknown-after-ack``). In a cluster a read may lag (a node that
        does not serve the conversation shows the stored state, and a message in
        the inbox is not in it yet), but it may never show a later message
        without an earlier one: the owner applies them in acknowledgement order.
        """
        acked = self._acked_sends()
        by_ack = sorted(acked.items(), key=lambda item: item[1][1])
        flagged: set[str] = set()
        for read_t, seen, read in self._reads():
            users = seen.get("users")
            if users is None:
                continue  # a history from before reads recorded the ids
            shown = set(users)
            node = read.ack.get("node") if read.ack else None
            latest = max(((acked[m][0], m) for m in shown if m in acked), default=(-_INF, None))
            for mid, (_, ack_t, op) in by_ack:
                if mid in shown or mid in flagged:
                    continue
                if ack_t < latest[0]:
                    later = latest[1]
                    flagged.add(mid)
                    self.add(
                        "order",
                        f"read op {read.op} (t={read_t}, node {node}) shows {later!r} but "
                        f"not {mid!r}, acknowledged at t={ack_t} before {later!r} was first "
                        f"sent (t={latest[0]})",
                        [op, read, *self.by_id.get(str(later), [])],
                    )
                elif not self.cluster and ack_t < read_t:
                    flagged.add(mid)
                    self.add(
                        "unknown-after-ack",
                        f"send {mid!r} acknowledged at t={ack_t}, but read op {read.op} "
                        f"invoked at t={read_t} does not show it",
                        [op, read],
                    )
                elif ack_t >= max(read_t, latest[0]):
                    break

    def check_cancels(self) -> None:
        """A cancel cuts only what was acknowledged before it.

        A read that shows the conversation ``cancelled`` holds its waiting
        messages because some cancel cut their turn. A cancel acknowledged
        before a message was first sent is applied before it (in a cluster too:
        acknowledgement order), so it cannot be that cancel: each waiting
        message needs a cancel that was not acknowledged before it was sent
        (acknowledged after, or of unknown result), invoked before the read
        returned.
        """
        cancels = [o for o in self.ops if o.f == "cancel" and o.result != "fail"]
        flagged: set[str] = set()
        for read_t, seen, read in self._reads():
            assert read.ack is not None
            done_t = float(read.ack["t"])
            if seen.get("status") == "cancelled":
                before = [c for c in cancels if c.first_t < done_t]
                for mid in seen.get("waiting") or []:
                    sends = self.by_id.get(mid)
                    if not sends or mid in flagged:
                        continue
                    sent_t = min(o.first_t for o in sends)
                    if any(c.ack is None or float(c.ack["t"]) > sent_t for c in before):
                        continue
                    flagged.add(mid)
                    acks = [float(c.ack["t"]) for c in before if c.ack is not None][-3:]
                    self.add(
                        "order",
                        f"read op {read.op} (t={read_t}) shows the conversation cancelled with "
                        f"{mid!r} waiting, first sent at t={sent_t}, but every cancel before "
                        f"the read was acknowledged before that (the last at {acks})",
                        [read, *sends, *before[-3:]],
                        around=(sent_t - 2.0, done_t + 0.5),
                    )

    def check_answer_order(self) -> None:
        """An answer applies after the messages acknowledged before it was sent, and to the
        question it names.

        A question seen by a read (a live view, or the stored state a node
        that does not serve the conversation shows: either way the turn that
        asked it had ended) waits until an answer or a message arrives. A send
        acknowledged after that read and before any answer to the question was
        first sent is applied first, and a message that arrives while the
        question is pending supersedes it: the question must end superseded,
        not approved or denied. And an approved/denied outcome needs an answer
        (yes/no) naming that question.
        """
        acked = self._acked_sends()
        for key, question in self.questions.items():
            if question.outcome not in ("approved", "denied"):
                continue
            attempts = [
                (float(e["t"]), e, o)
                for o in self.ops
                if o.f == "resume"
                for e in o.invokes
                if (e.get("value") or {}).get("question") == key
            ]
            want = "yes" if question.outcome == "approved" else "no"
            asked = [
                o
                for _, e, o in attempts
                if (e.get("value") or {}).get("answer") == want and o.result != "fail"
            ]
            if not asked:
                answers = sorted({str(e["value"].get("answer")) for _, e, _ in attempts})
                self.add(
                    "bad-outcome",
                    f"question {key} ended {question.outcome!r}, but no answer {want!r} naming "
                    f"it was sent (answers naming it: {answers})",
                    list({o.op: o for _, _, o in attempts}.values()),
                )
            seen_t = min(
                (
                    float(r.ack["t"])
                    for _, seen, r in self._reads()
                    if r.ack is not None and seen.get("question") == key
                ),
                default=_INF,
            )
            answered_t = min((t for t, _, _ in attempts), default=_INF)
            early = [
                (ack_t, mid, op)
                for mid, (first_t, ack_t, op) in acked.items()
                if first_t > seen_t and ack_t < answered_t
            ]
            if early:
                ack_t, mid, op = min(early, key=lambda e: e[0])
                self.add(
                    "order",
                    f"question {key} was seen pending at t={seen_t}; send {mid!r} was "
                    f"acknowledged at t={ack_t}, before any answer to it was sent "
                    f"(t={answered_t}), so it supersedes the question, but the question "
                    f"ended {question.outcome!r}",
                    [op, *list({o.op: o for _, _, o in attempts}.values())[:4]],
                    around=(seen_t - 0.5, answered_t + 2.0),
                )

    def check_unknown(self) -> None:
        """No conversation is reported unknown (404) after a command on it was acknowledged."""
        acks = [float(o.ack["t"]) for o in self.ops if o.f != "read" and o.ack is not None]
        if not acks:
            return
        first = min(acks)
        for op in self.ops:
            for invoke, done in zip(op.invokes, op.completions, strict=False):
                if done.get("status") == 404 and float(invoke["t"]) > first:
                    self.add(
                        "unknown-after-ack",
                        f"{op.f} op {op.op} (t={invoke['t']}) answered 404 although a command "
                        f"on the conversation was acknowledged at t={first}",
                        [op],
                    )
                    return

    def check_quiesce(self) -> None:
        event = next(
            (e for e in self.events if e.get("type") == "quiesce" and e["cid"] == self.cid), None
        )
        if event is None:
            return
        value = event.get("value") or {}
        last = value.get("last")
        if not last:
            return
        if not value.get("settled") and last.get("status") == "running":
            self.add("not-settled", f"quiesce: still running after the deadline: {last}")
            return
        if last.get("status") == "error":
            self.add("not-settled", f"quiesce: status error: {last}")
            return
        if last.get("status") == "interrupted" or last.get("question") is not None:
            return  # the queue waits for the answer (a stored question counts as well)
        if "waiting" in last:
            users = [str(m) for m in last["waiting"]]
        else:  # a history from before reads recorded the ids
            left = int(last.get("unanswered") or 0) + int(last.get("queued") or 0)
            prefix = self.messages[: int(last.get("messages") or 0)]
            users = (
                [str(m.get("id")) for m in prefix if m.get("role") == "user"][-left:]
                if left
                else []
            )
        if not users:
            return
        sends = [o for i in users for o in self.by_id.get(i, [])]
        start = min((o.first_t for o in sends), default=0.0)
        if self._cut(start, _INF):
            return
        self.add(
            "not-settled",
            f"quiesce: status {last.get('status')} with unanswered/queued {users} and no "
            "cancel or stop since they were sent: the work was not recovered",
            sends,
            around=(start - 1.0, _INF),
        )

    def check_settle(self) -> None:
        if self.final is None:
            return
        if not self.final.get("settled") or self.status not in ("idle", "not_running"):
            self.add(
                "not-settled",
                f"settle: final status {self.status!r}, settled={self.final.get('settled')}",
            )


def check(events: list[Event]) -> tuple[list[Violation], dict[str, Any]]:
    """Every violation in the history, and some figures about it."""
    ops = _ops(events)
    by_cid: dict[str, list[Op]] = defaultdict(list)
    for op in ops.values():
        by_cid[op.cid].append(op)
    finals = {e["cid"]: e for e in events if e.get("type") == "final"}
    violations: list[Violation] = []
    begin = next((e for e in events if e.get("f") == "begin"), {})
    cluster = (begin.get("value") or {}).get("mode") == "cluster"
    for cid in sorted(set(by_cid) | set(finals)):
        conversation = _Conversation(cid, by_cid[cid], finals.get(cid), events, cluster=cluster)
        violations += conversation.run()
    for event in events:
        if event.get("process") != "nemesis":
            continue
        if event["f"] in ("died", "start-failed"):
            kind = "server-died" if event["f"] == "died" else "start-failed"
            violations.append(
                Violation(
                    kind, None, json.dumps(event.get("value")), around=(event["t"] - 2, event["t"])
                )
            )
    errors = [o for o in ops.values() if any(e.get("status") == 500 for e in o.completions)]
    for op in errors[:5]:
        violations.append(Violation("internal-error", op.cid, f"{op.f} answered 500", [op.op]))
    stats = {
        "ops": len(ops),
        "by_f": dict(Counter(f"{o.f}:{o.result}" for o in ops.values())),
        "faults": dict(
            Counter(
                e["value"].get("fault", "?")
                for e in events
                if e.get("process") == "nemesis"
                and e["f"] in ("kill", "pause", "partition")
                and e["type"] == "info"
            )
        ),
        "5xx": sum(1 for e in events if (e.get("status") or 0) >= 500),
        "internal_errors": len(errors),
    }
    return violations, stats


def excerpt(events: list[Event], violation: Violation, limit: int = 60) -> list[Event]:
    """The events of the violation's operations, and the nemesis' around them."""
    wanted = set(violation.ops)
    chosen = [e for e in events if e.get("op") in wanted and e.get("process") != "nemesis"]
    start, end = violation.around or (
        (min(e["t"] for e in chosen) - 1.0, max(e["t"] for e in chosen) + 1.0)
        if chosen
        else (0.0, 0.0)
    )
    chosen += [
        e
        for e in events
        if (e.get("process") == "nemesis" and start <= e["t"] <= end)
        or (
            violation.cid is not None
            and e.get("cid") == violation.cid
            and e.get("f") in ("resume", "cancel", "stop")
            and e.get("type") != "invoke"
            and start <= e["t"] <= end
        )
    ]
    unique = {e["i"]: e for e in chosen}
    return [unique[i] for i in sorted(unique)][:limit]


def format_event(event: Event) -> str:
    keep = {k: v for k, v in event.items() if k not in ("i",) and v is not None}
    body = keep.get("body")
    if isinstance(body, dict) and "messages" in body:
        keep["body"] = {k: v for k, v in body.items() if k != "messages"}
    return json.dumps(keep, ensure_ascii=False, default=str)[:400]


def format_violation(events: list[Event], violation: Violation) -> str:
    lines = [f"[{violation.kind}] conversation {violation.cid}: {violation.detail}"]
    lines += ["    " + format_event(e) for e in excerpt(events, violation)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a saved chaos history (JSON lines).")
    parser.add_argument("history", type=Path)
    args = parser.parse_args(argv)
    events = load(args.history)
    violations, stats = check(events)
    print(json.dumps(stats))
    for violation in violations:
        print(format_violation(events, violation))
    print(f"{len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
