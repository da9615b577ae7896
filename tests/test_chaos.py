"""The randomized fault checker (``chaos/``), bounded, in the test suite.

Each case runs real ``python -m sessionvisor demo`` processes through the
public HTTP API while a nemesis injects faults, then checks every guarantee
from the recorded history (see chaos/README.md): no acknowledged command lost,
doubled or reordered, every acknowledged answer carried out once on the
question it names, every conversation settled.

- single mode, SQLite and PostgreSQL: ``kill -9`` at random, just after an
  acknowledged answer or send, and during recovery;
- cluster mode: three nodes on a fresh PostgreSQL database, each through a
  relay of its own, and a ``redis-server`` of the run's own, with every fault:
  the kills, SIGSTOP past the lease, Redis killed and restarted, one node's
  PostgreSQL connections black-holed (often past the lease) or reset.

Two fixed seeds per case plus one random seed (printed, and in the failure
message with the command that replays it). The cases run as parallel
processes, a few at a time (``CHAOS_PARALLEL``, default 3), started together
when the first of them is reached, so the whole module takes about two to
three minutes; ``make chaos`` runs longer.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._support.servers import IN_CI, absent, port_open

ROOT = Path(__file__).resolve().parent.parent
KILLS = "kill,kill-after-resume,kill-after-send,kill-in-recovery"
RANDOM_SEED = random.SystemRandom().randrange(1_000, 1_000_000)
SEEDS = [1, 2, RANDOM_SEED]
PARALLEL = int(os.environ.get("CHAOS_PARALLEL", "3"))
# A three-node run holds about 30 PostgreSQL connections: at most two at once
# stay well inside a default server's 100.
CLUSTERS_AT_ONCE = threading.Semaphore(2)
TIMEOUT = 240.0


@dataclass(frozen=True)
class Case:
    mode: str
    store: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.store}-seed{self.seed}"

    def arguments(self) -> list[str]:
        common = ["--seed", str(self.seed), "--store", self.store, "--mode", self.mode]
        if self.mode == "cluster":
            # every fault, packed closer than by default: about 15 in 45 s of client time
            return [*common, "--minutes", "0.75", "--interval", "0.5", "3"]
        return [*common, "--ops", "120", "--faults", KILLS, "--interval", "0.5", "2"]


@dataclass
class Outcome:
    command: list[str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float


def _run(case: Case, out: Path) -> Outcome:
    if case.mode == "cluster":
        with CLUSTERS_AT_ONCE:
            return _run_now(case, out)
    return _run_now(case, out)


def _run_now(case: Case, out: Path) -> Outcome:
    command = [sys.executable, "-m", "chaos.run", *case.arguments(), "--out", str(out)]
    env = {**os.environ, "TMPDIR": str(out)}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(
            command,
            None,
            _text(exc.stdout),
            _text(exc.stderr),
            time.monotonic() - started,
        )
    return Outcome(command, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _missing(case: Case) -> str | None:
    """Why the case cannot run here (None: it can)."""
    if case.store == "postgres" and not port_open(5432):
        return "no PostgreSQL on 127.0.0.1:5432"
    if case.mode == "cluster":
        if shutil.which("redis-server") is None:
            return "no redis-server on PATH"
        if importlib.util.find_spec("redis") is None:
            return "the 'cluster' extra (redis) is not installed"
    return None


CASES = [Case("cluster", "postgres", seed) for seed in SEEDS] + [
    Case("single", store, seed) for store in ("sqlite", "postgres") for seed in SEEDS
]


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Case, Future[Outcome]]]:
    """Start every selected case at once (a few at a time), the longest first."""
    selected = {
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and "case" in item.callspec.params
    }
    base = tmp_path_factory.mktemp("chaos")
    with ThreadPoolExecutor(max_workers=max(1, PARALLEL)) as pool:
        futures = {
            case: pool.submit(_run, case, base / case.name)
            for case in CASES
            if case in selected and _missing(case) is None
        }
        yield futures
        for future in futures.values():
            future.cancel()


def _id(case: Case) -> str:
    """A stable test id: the random seed is in the output and the failure, not the id."""
    seed = "random-seed" if case.seed == RANDOM_SEED else f"seed{case.seed}"
    return f"{case.mode}-{case.store}-{seed}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_acknowledged_command_survives_the_faults(
    case: Case, runs: dict[Case, Future[Outcome]]
) -> None:
    reason = _missing(case)
    if reason is not None:
        if IN_CI:
            absent(reason)
        pytest.skip(reason)
    print(f"chaos seed {case.seed} ({case.mode}, {case.store})")  # shown when the test fails
    outcome = runs[case].result()
    replay = f"python -m chaos.run {' '.join(case.arguments())}"
    if outcome.code is None:
        pytest.fail(
            f"seed {case.seed} ({case.name}) did not finish in {TIMEOUT:.0f} s; replay: "
            f"{replay}\n{outcome.stdout[-8000:]}\n{outcome.stderr[-3000:]}"
        )
    report = _report(outcome.stdout) + "\n" + outcome.stderr[-3000:]
    assert outcome.code == 0, (
        f"seed {case.seed} ({case.name}) found violations in {outcome.seconds:.0f} s; "
        f"replay: {replay} (the runner's own 'reproduce:' line names the commit)\n{report}"
    )
    assert "no violations" in outcome.stdout, report


def _report(stdout: str, limit: int = 20_000) -> str:
    """From the run's figures on: the violations with their history excerpts."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('{"ops"')), 0)
    text = "\n".join(lines[max(0, start - 2) :])
    return text if len(text) <= limit else text[:limit] + "\n... (cut; see the history file)"


# -- the checker's order rules on histories written by hand (no processes) ----------------


class _History:
    """A hand-written history: operations with their attempts, and the final states."""

    def __init__(self, mode: str = "single") -> None:
        self.events: list[dict[str, object]] = []
        self.op = 0
        self.add(process="nemesis", type="info", f="begin", t=0.0, value={"mode": mode})

    def add(self, **event: object) -> None:
        self.events.append({"i": len(self.events), **event})

    def call(
        self,
        f: str,
        at: float,
        done: str = "ok",
        *,
        status: int = 200,
        body: object = None,
        **value: object,
    ) -> None:
        self.op += 1
        common = {"process": "w0", "f": f, "op": self.op, "attempt": 0, "cid": "c0", "value": value}
        self.add(t=at, type="invoke", **common)
        self.add(t=at + 0.1, type=done, status=status, body=body, **common)

    def read(self, at: float, users: list[str], status: str = "idle", **seen: object) -> None:
        body = {"status": status, "users": users, "waiting": [], **seen}
        self.call("read", at, body=body)

    def final(self, *messages: tuple[str, str, str]) -> list[dict[str, object]]:
        listed = [{"id": mid, "role": role, "content": text} for mid, role, text in messages]
        value = {"status": "idle", "messages": listed}
        self.add(
            process="final", type="final", f="final", t=99.0, cid="c0", value=value, settled=True
        )
        return self.events


def _kinds(events: list[dict[str, object]]) -> list[str]:
    from chaos.check import check

    return sorted(v.kind for v in check(events)[0])


QUESTION = "That needs the dangerous tool delete_files. I will not run it without your approval."


def _reply(*texts: str) -> str:
    return f"You said: “{' / '.join(texts)}”."


def test_checker_an_answer_sent_after_an_acknowledged_message_does_not_apply_before_it() -> None:
    def history(resume: str) -> list[dict[str, object]]:
        h = _History()
        h.call("send", 0.0, id="m0", content="please delete m0")
        h.read(1.0, ["m0"], "interrupted", question="q0")
        h.call("send", 2.0, id="m1", content="hello m1")
        ok = resume == "ok"
        h.call("resume", 3.0, resume, status=202 if ok else 409, answer="yes", question="q0")
        if ok:  # the answer was applied ahead of m1, which the owner had acknowledged first
            return h.final(
                ("m0", "user", "please delete m0"),
                ("q0", "assistant", QUESTION),
                ("t0", "tool", "deleted"),
                ("a0", "assistant", "Approved: I ran delete_files."),
                ("m1", "user", "hello m1"),
                ("r1", "assistant", _reply("hello m1")),
            )
        return h.final(  # m1 superseded the question, the late answer was refused
            ("m0", "user", "please delete m0"),
            ("q0", "assistant", QUESTION),
            ("m1", "user", "hello m1"),
            ("r1", "assistant", _reply("hello m1")),
        )

    assert _kinds(history("ok")) == ["order"]
    assert _kinds(history("fail")) == []


def test_checker_a_cluster_answer_stored_after_an_acknowledged_message_finds_it_superseded() -> (
    None
):
    # In a cluster an answer's 202 may only mean "stored": the owner applies the
    # message acknowledged before it first, which supersedes the question, and the
    # answer then finds nothing to answer. In one process that 202 is impossible.
    def history(mode: str, message_first: bool) -> list[dict[str, object]]:
        h = _History(mode)
        h.call("send", 0.0, id="m0", content="please delete m0")
        h.read(1.0, ["m0"], "interrupted", question="q0")
        h.call("send", 2.0 if message_first else 4.0, id="m1", content="hello m1")
        h.call("resume", 3.0, status=202, answer="yes", question="q0")
        return h.final(
            ("m0", "user", "please delete m0"),
            ("q0", "assistant", QUESTION),
            ("m1", "user", "hello m1"),
            ("r1", "assistant", _reply("hello m1")),
        )

    assert _kinds(history("cluster", message_first=True)) == []
    assert _kinds(history("cluster", message_first=False)) == ["lost-answer"]
    assert _kinds(history("single", message_first=True)) == ["lost-answer"]


def test_checker_a_cancel_acknowledged_before_a_send_does_not_hold_that_message() -> None:
    def history(cancel_at: float) -> list[dict[str, object]]:
        h = _History("cluster")
        h.call("send", 0.0, id="m0", content="hello m0")
        h.call("cancel", cancel_at)
        h.call("send", 2.0, id="m1", content="hello m1")
        h.read(3.0, ["m0", "m1"], "cancelled", waiting=["m0", "m1"])
        h.call("send", 4.0, id="m2", content="hello m2")
        return h.final(
            ("m0", "user", "hello m0"),
            ("m1", "user", "hello m1"),
            ("m2", "user", "hello m2"),
            ("r2", "assistant", _reply("hello m0", "hello m1", "hello m2")),
        )

    assert _kinds(history(1.0)) == ["order"]  # m1 waits behind a cancel acknowledged before it
    assert _kinds(history(2.5)) == []  # the cancel came after m1: it may cut m1's turn


def test_checker_a_read_never_shows_a_message_without_one_acknowledged_before_it() -> None:
    def history(mode: str, *reads: tuple[float, list[str]]) -> list[dict[str, object]]:
        h = _History(mode)
        h.call("send", 0.0, id="m0", content="hello m0")
        h.call("send", 2.0, id="m1", content="hello m1")
        for at, users in reads:
            h.read(at, users)
        return h.final(
            ("m0", "user", "hello m0"),
            ("m1", "user", "hello m1"),
            ("r1", "assistant", _reply("hello m0", "hello m1")),
        )

    assert _kinds(history("cluster", (3.0, ["m1"]))) == ["order"]
    assert _kinds(history("cluster", (1.0, []))) == []  # a node that lags: allowed in a cluster
    assert _kinds(history("single", (1.0, []))) == ["unknown-after-ack"]
    assert _kinds(history("single", (3.0, ["m0", "m1"]))) == []


def test_checker_no_conversation_unknown_after_an_acknowledged_command() -> None:
    h = _History("cluster")
    h.call("send", 0.0, id="m0", content="hello m0")
    h.call("read", 1.0, "fail", status=404, body={"error": "NotFound"})
    events = h.final(("m0", "user", "hello m0"), ("r0", "assistant", _reply("hello m0")))
    assert _kinds(events) == ["unknown-after-ack"]


def test_checker_an_outcome_needs_an_answer_naming_its_question_and_outputs_are_stored_once() -> (
    None
):
    h = _History()
    h.call("send", 0.0, id="m0", content="please delete m0")
    h.call("resume", 1.0, status=202, answer="no", question="q0")
    events = h.final(
        ("m0", "user", "please delete m0"),
        ("q0", "assistant", QUESTION),
        ("t0", "tool", "deleted"),
        ("a0", "assistant", "Approved: I ran delete_files."),
        ("a0", "assistant", "Approved: I ran delete_files."),
    )
    from chaos.check import check

    found = {v.kind: v.detail for v in check(events)[0]}
    assert "duplicate-output" in found
    assert "no answer 'yes' naming it" in found["bad-outcome"]


def test_a_cluster_node_reaches_its_database_through_a_relay_of_its_own() -> None:
    from urllib.parse import urlsplit

    from chaos.procs import Postgres

    database = Postgres("chaos_example")
    relay, url = database.relay()
    try:
        through, direct = urlsplit(url), urlsplit(database.url)
        assert (through.hostname, through.port) == ("127.0.0.1", relay.port)
        assert (through.username, through.path) == (direct.username, direct.path)
        assert relay.target == (database.host, database.port)
    finally:
        relay.close()
