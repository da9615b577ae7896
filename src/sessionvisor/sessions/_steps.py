"""Durable steps: ``turn.step`` runs a call at most once per turn and stores its result.

A turn's steps live in its *journal* (``State.journal``), saved with the
conversation like everything else the runtime owns (fenced by the owner's epoch
in a cluster, group-committed by the store). A journal belongs to one turn,
named by what the turn answers: its first user message, or the interrupt a
resume answers. A turn cut by a crash, a failover or a stop runs again with the
same name, so it finds its journal and replays it: each step that completed
returns its stored result, a step that started without a stored result is
called again only when it is idempotent. Any other turn starts a new journal.

A step that is not idempotent is saved as *started* before its function runs,
and saved again with its result: a crash between the two leaves a step whose
outcome nobody knows, which the rerun reports (``StepOutcomeUnknown``) instead
of doing the work twice. An idempotent step is saved once, with its result.

When a turn ends (completed, interrupted, paused, failed or cancelled) its
journal joins the audit trail (``State.steps``, bounded), where a step that
never completed reads as ``unknown`` and a large result is left out.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .._clock import utcnow
from .._errors import (
    InvalidStatus,
    StepMismatch,
    StepOutcomeUnknown,
    StepResultError,
    StoreUnavailable,
)
from .._json import json_problem
from ..state import Journal, PendingInterrupt, State, StepRecord
from ._events import describe

if TYPE_CHECKING:
    from ..agents import Turn
    from ..agents._agent import StepCall
    from ._actor import Actor
    from ._turns import TurnControl

__all__: list[str] = [
    "AUDIT_KEEP",
    "AUDIT_RESULT_BYTES",
    "audit_view",
    "journal_name",
    "retire_journal",
    "run_step",
]

#: The audit trail keeps the steps of ended turns up to about this many (the oldest
#: go first, in batches: a trim replaces the list, which the SQL stores answer by
#: rewriting its rows, so it is not done at every turn). The stores keep it as one
#: row per step, written once, so its length does not weigh on a save.
AUDIT_KEEP = 1000
_AUDIT_SLACK = 250
#: A step's result larger than this (as JSON) is left out of the audit trail.
AUDIT_RESULT_BYTES = 4096


def journal_name(
    state: State, *, mark: int, taken: int, answered: PendingInterrupt | None
) -> str | None:
    """The name of the journal of a turn: the same for a cut turn and its reruns.

    None when the turn answers nothing that names it (it then journals under a
    name of its own, made at its first step, which no rerun finds).
    """
    if answered is not None:
        return "r-" + answered.id
    if taken > 0 and mark - taken >= 0:
        return "m-" + state.messages[mark - taken].id
    return None


async def run_step(actor: Actor, turn: Turn, step: StepCall) -> Any:
    """Run ``step`` of the turn ``actor`` runs now (see the module docstring)."""
    control = actor.turn
    if control.current is not turn:
        raise InvalidStatus(
            f"step {step.name!r} was called after its turn ended; "
            "steps run only inside the turn that calls them",
            str(actor.status),
        )
    state = actor.state
    journal = _open(state, control)
    index = control.next_step
    control.next_step += 1
    if index < len(journal.steps):
        record = journal.steps[index]
        if record.name != step.name:
            raise StepMismatch(index, record.name, step.name)
        if record.status == "completed":
            actor.host.stats.steps_replayed += 1
            return _restore(record, step.returns)
        if not step.idempotent:
            raise StepOutcomeUnknown(step.name, index)
        record.started_at = utcnow()
        record.status = "started"
    else:
        record = StepRecord(
            turn=journal.turn, index=index, name=step.name, idempotent=step.idempotent
        )
        journal.steps.append(record)
        if not step.idempotent:
            # The intent is stored before the effect: a crash inside the call leaves
            # a step the rerun knows may have run.
            await _save(actor, step.name, "could not be stored before it ran")
    began = time.perf_counter()
    try:
        result = await step.run()
    except Exception as exc:
        # Recorded for the audit trail; a rerun treats it as a step that started and
        # has no result (what the function did before it raised is not known).
        record.status, record.error = "failed", describe(exc)
        record.duration = time.perf_counter() - began
        actor.mark_changed()
        await actor.persist("turn_start")  # best effort: the exception is what counts
        raise
    took = time.perf_counter() - began
    try:
        stored, model = _encode(result, step.name, actor.opts.max_step_bytes)
    except StepResultError:
        if step.idempotent:
            await _save(actor, step.name, "could not be stored")
        raise
    usage = step.usage(result) if step.usage is not None else None
    record.status, record.error = "completed", None
    record.result = stored
    record.model = model
    record.duration = took
    record.usage = usage
    if usage is not None:
        state.usage = state.usage + usage
        actor.host.stats.count_usage(actor.route_key, usage)
    actor.host.stats.steps_run += 1
    await _save(actor, step.name, "ran but its result could not be stored")
    return result


def retire_journal(state: State) -> None:
    """The turn ended: its journal (if any) joins the audit trail."""
    journal = state.journal
    if journal is None:
        return
    state.journal = None
    if not journal.steps:
        return
    trail = state.steps
    trail.extend(_audited(record) for record in journal.steps)
    if len(trail) > AUDIT_KEEP + _AUDIT_SLACK:
        state.steps = trail[len(trail) - AUDIT_KEEP :]


def audit_view(state: State) -> list[StepRecord]:
    """The steps ``steps()`` lists: the ended turns' then the running (or cut) turn's."""
    listed = [record.model_copy() for record in state.steps]
    if state.journal is not None:
        listed.extend(_trimmed(record.model_copy()) for record in state.journal.steps)
    return listed


# -- the parts -----------------------------------------------------------------------


def _open(state: State, control: TurnControl) -> Journal:
    name = control.journal_name
    journal = state.journal
    if journal is not None and name is not None and journal.turn == name:
        return journal
    # Another turn's journal (cut, and never to run again): it is that turn's record.
    retire_journal(state)
    if name is None:  # a turn that answers nothing nameable: a name no rerun finds
        name = control.journal_name = "t-" + uuid4().hex
    journal = state.journal = Journal(turn=name)
    return journal


async def _save(actor: Actor, name: str, what: str) -> None:
    actor.mark_changed()
    if not await actor.persist("turn_start"):
        raise StoreUnavailable(
            f"step {name!r} of conversation {actor.conversation_id!r} {what}: "
            "the store refused the save (it is retried in the background)"
        )


def _encode(result: Any, name: str, limit: int) -> tuple[Any, str | None]:
    model = None
    if isinstance(result, BaseModel):
        cls = type(result)
        model = f"{cls.__module__}:{cls.__qualname__}"
    try:
        data = to_jsonable_python(result)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StepResultError(
            f"step {name!r} returned a {type(result).__name__}, which cannot be stored "
            f"as JSON ({exc}); return JSON-ready data or a pydantic model"
        ) from exc
    problem = json_problem(data)  # depth, non-finite numbers, lone surrogates, huge ints
    if problem is not None:
        where, what, _ = problem
        raise StepResultError(
            f"step {name!r} returned a {type(result).__name__} that cannot be stored: "
            f"{what} (at {where or 'the top'})"
        )
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    if size > limit:
        raise StepResultError(
            f"step {name!r} returned a {type(result).__name__} of {size} bytes as JSON, "
            f"over max_step_bytes ({limit})"
        )
    return json.loads(text), model


def _restore(record: StepRecord, returns: Any) -> Any:
    # A model comes back as the model class the step's function declares it
    # returns; without that declaration, as the model's JSON form.
    value = record.result
    if record.model is not None and isinstance(returns, type) and issubclass(returns, BaseModel):
        return returns.model_validate(value)
    return value


def _audited(record: StepRecord) -> StepRecord:
    audited = record.model_copy()
    if audited.status == "started":
        audited.status = "unknown"
    return _trimmed(audited)


def _trimmed(record: StepRecord) -> StepRecord:
    if record.result is not None:
        size = len(json.dumps(record.result, ensure_ascii=False, separators=(",", ":")))
        if size > AUDIT_RESULT_BYTES:
            record.result = None
            record.omitted = True
    return record
