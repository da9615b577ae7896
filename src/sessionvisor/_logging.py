"""How ``python -m sessionvisor`` logs: structlog's lines and uvicorn's, console or JSON.

Whatever the format, every line keeps two promises:

- **No bearer token.** ``?access_token=`` exists for ``EventSource``, and an
  access log writes down whole URLs; the value of an ``access_token`` query
  parameter (its name percent-encoded too) or field is replaced by
  ``[redacted]`` in structlog's lines, uvicorn's server lines and its access
  log.
- **Bounded size, no local variables.** A traceback keeps the first and last
  frames of each exception, a few links of its chain and a few members of an
  exception group; every message is cut to a few kilobytes. Rendering locals
  (rich's console traceback) once blocked the event loop for three minutes on
  a ``RecursionError`` over client data, so no mode shows them.
"""

from __future__ import annotations

import json
import linecache
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from traceback import walk_tb
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "REDACTED",
    "configure_console_logs",
    "configure_json_logs",
    "dict_traceback",
    "format_exception",
    "redact_event",
    "redact_text",
    "uvicorn_log_config",
]

REDACTED = "[redacted]"
#: Names (of query parameters and of logged fields) whose value is a credential.
_SECRET_NAMES = frozenset({"access_token"})
# key=value as in a query string, for the keys that can decode to a secret name:
# the name itself in any case, or one with a %-escape. The key is not preceded by a
# key character, so "xaccess_token=" is another key; the value ends where a URL, a
# quoted string or a colour code would.
_PAIR = re.compile(r"(?<![\w%.+~-])((?i:access_token)|[\w.+~-]*%[\w%.+~-]*)=([^&\s\"'#<>\\\x1b]*)")

_MAX_VALUE = 8 * 1024  # one logged string
_MAX_TEXT = 2 * 1024  # a message, a note, a file name inside a traceback
_MAX_EXCEPTION = 20 * 1024  # one whole rendered exception
_MAX_DEPTH = 6  # nested containers walked by redact_event


def redact_text(text: str) -> str:
    """``text`` with the value of every ``access_token=`` pair replaced by ``[redacted]``."""
    if "=" not in text or ("%" not in text and "access_token" not in text.lower()):
        return text

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if urllib.parse.unquote_plus(key).lower() in _SECRET_NAMES:
            return f"{key}={REDACTED}"
        return match.group(0)

    return _PAIR.sub(replace, text)


# Where a query value ends: a cut made inside a value resumes after it.
_VALUE_END = re.compile(r"[&\s\"'#<>\\\x1b]")


def _cut(text: str, limit: int) -> str:
    """``text`` redacted, and if longer than ``limit``, its head and tail around a
    note of what was cut.

    Only the kept parts are scanned (a huge string costs no more than a small
    one), and the tail starts at the end of a value: a cut inside a token must
    not leave its second half in the log without the name that marks it.
    """
    if len(text) <= limit:
        return redact_text(text)
    keep = limit // 2
    head, tail = text[:keep], text[len(text) - keep :]
    end = _VALUE_END.search(tail)
    tail = tail[end.start() :] if end else ""
    cut = len(text) - len(head) - len(tail)
    return f"{redact_text(head)} [... {cut} characters cut ...] {redact_text(tail)}"


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _cut(value, _MAX_VALUE)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in _SECRET_NAMES else _clean(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_clean(v, depth + 1) for v in value)
    return value


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: no credential and no huge string reaches the renderer.

    A field named ``access_token`` is replaced whole; in every string (nested
    ones included) an ``access_token=`` pair is redacted, and the string is cut
    to 8 KiB.
    """
    for key, value in event_dict.items():
        if key.lower() in _SECRET_NAMES:
            event_dict[key] = REDACTED
        elif not key.startswith("_"):  # structlog's own (_record, _from_structlog)
            event_dict[key] = _clean(value, 0)
    return event_dict


class _Redacting:
    """Wraps a renderer and redacts what it rendered: covers values that became text
    only there (a ``repr``, a traceback)."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        rendered = self.renderer(logger, method, event_dict)
        return redact_text(rendered) if isinstance(rendered, str) else rendered


# -- exceptions ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    chain: int  # exceptions of a __cause__/__context__ chain, newest first
    members: int  # sub-exceptions shown of an exception group
    head: int  # first frames of a traceback
    tail: int  # last frames


# Tried in order until the rendering fits _MAX_EXCEPTION; the last always does.
_LIMITS = (_Limits(5, 3, 10, 10), _Limits(2, 1, 3, 3), _Limits(1, 0, 1, 1))
_MAX_CHAIN_WALK = 10_000


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the log line
        return f"<the {type(exc).__name__}'s str() failed>"


def _frames(tb: TracebackType | None, limits: _Limits) -> list[dict[str, Any]]:
    walked = list(walk_tb(tb))
    keep = walked
    skipped = 0
    if len(walked) > limits.head + limits.tail:
        skipped = len(walked) - limits.head - limits.tail
        keep = walked[: limits.head] + walked[len(walked) - limits.tail :]
    frames = [
        {
            "filename": _cut(frame.f_code.co_filename, _MAX_TEXT),
            "lineno": lineno,
            "name": _cut(frame.f_code.co_name, _MAX_TEXT),
        }
        for frame, lineno in keep
    ]
    if skipped:
        # structlog's own marker for frames left out, so the shape stays the same.
        frames.insert(
            limits.head, {"filename": "", "lineno": -1, "name": f"Skipped frames: {skipped}"}
        )
    return frames


def _chain(
    exc: BaseException, tb: TracebackType | None
) -> tuple[list[tuple[BaseException, TracebackType | None, bool]], int]:
    """The exception and those it was raised from or during, newest first, and how
    many there were in all (counted up to a bound)."""
    links: list[tuple[BaseException, TracebackType | None, bool]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    is_cause = False
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN_WALK:
        seen.add(id(current))
        links.append((current, tb if current is exc else current.__traceback__, is_cause))
        if current.__cause__ is not None:
            current, is_cause = current.__cause__, True
        elif not current.__suppress_context__:
            current, is_cause = current.__context__, False
        else:
            current = None
    return links, len(seen)


def _stacks(
    exc: BaseException, tb: TracebackType | None, limits: _Limits, *, nested: bool = False
) -> list[dict[str, Any]]:
    links, total = _chain(exc, tb)
    stacks = []
    for link, link_tb, is_cause in links[: limits.chain]:
        notes = getattr(link, "__notes__", None)
        notes = list(notes) if isinstance(notes, list | tuple) else []
        stack: dict[str, Any] = {
            "exc_type": _cut(type(link).__qualname__, _MAX_TEXT),
            "exc_value": _cut(_safe_str(link), _MAX_TEXT),
            "exc_notes": [_cut(str(note), _MAX_TEXT) for note in notes[:3]],
            "syntax_error": None,
            "is_cause": is_cause,
            "frames": _frames(link_tb, limits),
            "is_group": isinstance(link, BaseExceptionGroup),
            "exceptions": [],
        }
        if isinstance(link, SyntaxError):
            stack["syntax_error"] = {
                "offset": link.offset or 0,
                "filename": _cut(link.filename or "?", _MAX_TEXT),
                "lineno": link.lineno or 0,
                "line": _cut(link.text or "", _MAX_TEXT),
                "msg": _cut(str(link.msg), _MAX_TEXT),
            }
        if isinstance(link, BaseExceptionGroup):
            members = link.exceptions
            # A member of a group is shown alone and shallow: one level of groups.
            shown = [] if nested else members[: limits.members]
            one = _Limits(1, 0, min(limits.head, 3), min(limits.tail, 3))
            stack["exceptions"] = [
                _stacks(member, member.__traceback__, one, nested=True) for member in shown
            ]
            if len(members) > len(shown):
                stack["exceptions_not_shown"] = len(members) - len(shown)
        stacks.append(stack)
    if total > len(stacks):
        stacks[-1]["chain_not_shown"] = total - len(stacks)
    return stacks


def _exc_parts(exc_info: Any) -> tuple[BaseException, TracebackType | None] | None:
    if isinstance(exc_info, BaseException):
        return exc_info, exc_info.__traceback__
    if (
        isinstance(exc_info, tuple)
        and len(exc_info) == 3
        and isinstance(exc_info[1], BaseException)
    ):
        return exc_info[1], exc_info[2]
    return None


def dict_traceback(exc_info: Any) -> list[dict[str, Any]]:
    """An exception as structlog's ``dict_tracebacks`` shapes it (a list of stacks,
    newest first), without locals and at most about 20 KiB once encoded."""
    parts = _exc_parts(exc_info)
    if parts is None:
        return []
    stacks: list[dict[str, Any]] = []
    for limits in _LIMITS:
        stacks = _stacks(*parts, limits)
        if len(json.dumps(stacks, default=str)) <= _MAX_EXCEPTION:
            break
    return stacks


def _source(frame: Mapping[str, Any]) -> str:
    if frame["lineno"] < 0:
        return ""
    line = linecache.getline(frame["filename"], frame["lineno"]).strip()
    return f"    {_cut(line, 200)}\n" if line else ""


def _render(stacks: list[dict[str, Any]], indent: str = "") -> str:
    out: list[str] = []
    if stacks and stacks[-1].get("chain_not_shown"):
        out.append(
            f"[{stacks[-1]['chain_not_shown']} earlier exceptions of the chain not shown]\n\n"
        )
    for index in range(len(stacks) - 1, -1, -1):
        stack = stacks[index]
        if index < len(stacks) - 1:
            out.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if stacks[index + 1]["is_cause"]
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if stack["frames"]:
            out.append("Traceback (most recent call last):\n")
        for frame in stack["frames"]:
            if frame["lineno"] < 0:
                out.append(
                    f"  [... {frame['name'].removeprefix('Skipped frames: ')} frames skipped ...]\n"
                )
            else:
                out.append(
                    f'  File "{frame["filename"]}", line {frame["lineno"]}, in {frame["name"]}\n'
                )
                out.append(_source(frame))
        value = stack["exc_value"]
        out.append(f"{stack['exc_type']}: {value}\n" if value else f"{stack['exc_type']}\n")
        out.extend(f"{note}\n" for note in stack["exc_notes"])
        for number, member in enumerate(stack["exceptions"], 1):
            out.append(f"  +-- sub-exception {number}:\n")
            out.append(_render(member, "  |   "))
        if stack.get("exceptions_not_shown"):
            out.append(f"  +-- {stack['exceptions_not_shown']} more sub-exceptions not shown\n")
    text = "".join(out)
    if indent:
        text = "".join(indent + line for line in text.splitlines(keepends=True))
    return text


def format_exception(exc_info: Any) -> str:
    """An exception as Python prints it, bounded: no locals, the first and last
    frames, a few links of the chain, at most 20 KiB, tokens redacted."""
    parts = _exc_parts(exc_info)
    if parts is None:
        return ""
    text = ""
    for limits in _LIMITS:
        text = _render(_stacks(*parts, limits))
        if len(text) <= _MAX_EXCEPTION:
            break
    return _cut(text, _MAX_EXCEPTION)


def _console_traceback(sio: TextIO, exc_info: Any) -> None:
    sio.write("\n" + format_exception(exc_info))


def _dict_tracebacks() -> Any:
    import structlog

    return structlog.processors.ExceptionRenderer(dict_traceback)


# -- configuration -----------------------------------------------------------------


def _level(level: str) -> int:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(
            f"unknown log level {level!r}; use critical, error, warning, info or debug"
        )
    return number


def _colors() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout is not None and hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def _json_processors() -> list[Any]:
    """What every JSON line goes through, structlog's own and uvicorn's alike."""
    import structlog

    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # A traceback becomes a list of frames inside the line, never extra lines.
        _dict_tracebacks(),
        redact_event,
    ]


def configure_json_logs(level: str = "info") -> None:
    """Send structlog's lines to stdout as one JSON object each, from ``level`` up.

    Every line has ``event``, ``level`` and ``timestamp`` (ISO 8601, UTC), plus
    what the logger bound: a session's lines carry ``conversation_id`` and
    ``agent_id``. A traceback is a bounded list of frames under ``exception``,
    without locals; tokens are redacted. ``serve`` and ``demo`` call it for
    ``--log-format json`` and hand uvicorn the matching configuration.

    Raises:
        ValueError: ``level`` is not a logging level.
    """
    import structlog

    structlog.configure(
        processors=[*_json_processors(), _Redacting(structlog.processors.JSONRenderer())],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def configure_console_logs(level: str = "info") -> None:
    """structlog's lines for people on stdout, from ``level`` up (colours on a terminal).

    A traceback is plain text, bounded and without locals; tokens are redacted.
    ``serve`` and ``demo`` call it for ``--log-format console`` (the default).

    Raises:
        ValueError: ``level`` is not a logging level.
    """
    import structlog

    renderer = structlog.dev.ConsoleRenderer(
        colors=_colors(), exception_formatter=_console_traceback
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            redact_event,
            _Redacting(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


class RedactingFilter(logging.Filter):
    """A ``logging`` filter that redacts tokens from a record's message and arguments
    (uvicorn's access line carries the URL as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {
                k: redact_text(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its server and access lines redacted and bounded too.

    ``console`` keeps uvicorn's own look (server lines on stderr, the access log
    on stdout); ``json`` renders them as the JSON lines of ``configure_json_logs``.
    """
    import uvicorn.logging

    handlers = ("default", "access") if log_format == "console" else ("json",)
    filters = {"redact": {"()": RedactingFilter}}
    if log_format == "console":

        class Default(uvicorn.logging.DefaultFormatter):
            def formatException(self, ei: Any) -> str:
                return format_exception(ei).rstrip("\n")

        class Access(uvicorn.logging.AccessFormatter):
            def formatException(self, ei: Any) -> str:
                return format_exception(ei).rstrip("\n")

        return {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": filters,
            "formatters": {
                "default": {
                    "()": Default,
                    "fmt": "%(levelprefix)s %(message)s",
                    "use_colors": None,
                },
                "access": {
                    "()": Access,
                    "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
                },
            },
            "handlers": {
                "default": {
                    "formatter": "default",
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                    "filters": ["redact"],
                },
                "access": {
                    "formatter": "access",
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "filters": ["redact"],
                },
            },
            "loggers": {
                "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
                "uvicorn.error": {"level": level.upper()},
                "uvicorn.access": {
                    "handlers": ["access"],
                    "level": level.upper(),
                    "propagate": False,
                },
            },
        }
    import structlog

    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [structlog.stdlib.add_logger_name, *_json_processors()],
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _Redacting(structlog.processors.JSONRenderer()),
        ],
    }
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stdout",
        "filters": ["redact"],
    }
    logger = {"handlers": list(handlers), "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": filters,
        "formatters": {"json": formatter},
        "handlers": {"json": handler},
        "loggers": {name: logger for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
