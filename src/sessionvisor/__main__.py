"""The command line: ``python -m sessionvisor demo`` and ``python -m sessionvisor serve``.

``demo`` serves the offline demo agent (over SQLite unless ``--store`` names
another store) with the chat page at ``/``; ``serve module:router`` serves
your own router. Both run uvicorn (the ``http`` extra) on asyncio and drain
the supervisor on Ctrl+C or SIGTERM. With ``--cluster redis://...`` (and a
``postgresql://`` store) the process is one node of a cluster (the
``cluster`` extra): see ``docs/cluster.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from ._logging import configure_console_logs, configure_json_logs, uvicorn_log_config

if TYPE_CHECKING:
    from .cluster import Cluster
    from .state import StateStore

__all__ = [
    "cluster_from_args",
    "configure_console_logs",
    "configure_json_logs",
    "jwt_scope_from_args",
    "load_object",
    "main",
    "open_store",
    "redact_url",
    "uvicorn_log_config",
]

_DEMO_DB = "sessionvisor-demo.db"
_HTTP_EXTRA = "the HTTP server needs the 'http' extra: pip install 'sessionvisor[http]'"


def load_object(spec: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted) and return it.

    The current directory is importable, as with uvicorn.

    Raises:
        ValueError: ``spec`` has no ``:``.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:attribute', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj


def open_store(url: str) -> StateStore:
    """Return the store a URL names.

    ``memory`` (nothing survives the process), ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``, or
    ``postgresql://user@host/db`` (the ``postgres`` extra).

    Raises:
        ValueError: the URL names no store this knows.
    """
    from .state import MemoryStore, SQLiteStore

    if url in ("memory", "memory:", "memory://"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise ValueError(f"store URL {url!r} names no database file")
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from .state.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unknown store URL {url!r}; use memory, sqlite:///path.db or postgresql://..."
    )


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query
    parameter) replaced by ``***``: what a banner or a log line may show."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = "&".join(
                f"{key}=***" if key.lower() == "password" else f"{key}={value}"
                for key, value in pairs
            )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: urlunsplit would drop the empty host of sqlite:///path
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_POSTGRES_URL = ("postgresql://", "postgres://")


def cluster_from_args(args: argparse.Namespace, store_url: str | None) -> Cluster | None:
    """The ``Cluster`` the ``--cluster``/``--node-id``/``--lease-ttl`` options
    describe, or None without ``--cluster``.

    Raises:
        ValueError: ``--node-id``/``--lease-ttl`` without ``--cluster``, a cluster
            without a ``postgresql://`` store, or a value ``Cluster`` refuses.
    """
    if args.cluster is None:
        given = [
            flag
            for flag, value in (("--node-id", args.node_id), ("--lease-ttl", args.lease_ttl))
            if value is not None
        ]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{' and '.join(given)} {verb} --cluster redis://...")
        return None
    if store_url is None or not store_url.startswith(_POSTGRES_URL):
        raise ValueError(
            "--cluster needs a postgresql:// --store (the nodes share its database; "
            f"got {'the default SQLite file' if store_url is None else redact_url(store_url)})"
        )
    from .cluster import Cluster

    lease_ttl = 10.0 if args.lease_ttl is None else args.lease_ttl
    try:
        return Cluster(args.cluster, node_id=args.node_id, lease_ttl=lease_ttl)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _timeout(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "never"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the timeout cannot be negative")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sessionvisor",
        description="Serve sessionvisor's chat backend (REST + Server-Sent Events + a chat page).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, timeout_default: float | None) -> None:
        sub.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
        sub.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        sub.add_argument(
            "--inactivity-timeout",
            type=_timeout,
            default=timeout_default,
            metavar="S",
            help="seconds before an idle session stops ('none' disables; "
            f"default {timeout_default})",
        )
        sub.add_argument(
            "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
        )
        sub.add_argument(
            "--log-format",
            default="console",
            choices=["console", "json"],
            help="console (default: for people) or json (one JSON object per line on "
            "stdout, uvicorn's lines included: for log collectors)",
        )
        quotas = sub.add_argument_group("quotas per owner", "see docs/quotas.md")
        quotas.add_argument(
            "--messages-per-minute",
            type=_positive_int,
            metavar="N",
            help="messages one owner may send per minute; past it a send is a 429 with "
            "Retry-After (default: no limit)",
        )
        quotas.add_argument(
            "--max-running-per-owner",
            type=_positive_int,
            metavar="N",
            help="turns of one owner running at once; the others wait in their queues "
            "(default: no limit)",
        )
        server = sub.add_argument_group(
            "server limits",
            "uvicorn's own bounds (it has no deadline for a request body: put a reverse "
            "proxy with a client body timeout in front; see docs/operations.md)",
        )
        server.add_argument(
            "--limit-concurrency",
            type=_positive_int,
            metavar="N",
            help="answer 503 once N connections or requests are open (event streams "
            "included; default: no limit)",
        )
        server.add_argument(
            "--timeout-keep-alive",
            type=_positive_int,
            default=5,
            metavar="S",
            help="close an idle keep-alive connection after S seconds (default 5)",
        )
        cluster = sub.add_argument_group(
            "cluster",
            "run as one node of several sharing one PostgreSQL database (--store "
            "postgresql://...) and one Redis (the 'cluster' extra; see docs/cluster.md)",
        )
        cluster.add_argument(
            "--cluster", metavar="REDIS_URL", help="the cluster's Redis: redis://host:port/db"
        )
        cluster.add_argument(
            "--node-id",
            metavar="NAME",
            help="this node's name, kept across its restarts (default <hostname>-<pid>)",
        )
        cluster.add_argument(
            "--lease-ttl",
            type=float,
            metavar="S",
            help="seconds a conversation's lease lasts without renewal: how soon the "
            "others take over from a dead node (default 10)",
        )
        auth = sub.add_argument_group(
            "authentication",
            "verify a bearer JWT (Authorization header; ?access_token= on the GET event "
            "streams only, for EventSource); its 'sub' claim owns the conversations",
        )
        keys = auth.add_mutually_exclusive_group()
        keys.add_argument(
            "--jwt-secret-file",
            metavar="F",
            help="HMAC secret (the file's text): at least 32 bytes for HS256, 48 for HS384, "
            "64 for HS512",
        )
        keys.add_argument("--jwt-public-key-file", metavar="F", help="PEM public key (RS256/ES256)")
        keys.add_argument("--jwt-jwks-file", metavar="F", help="JWKS key set (picked by kid)")
        auth.add_argument("--jwt-audience", metavar="AUD", help="required 'aud' claim")
        auth.add_argument("--jwt-issuer", metavar="ISS", help="required 'iss' claim")
        auth.add_argument(
            "--jwt-algorithm",
            action="append",
            metavar="ALG",
            help="accepted algorithm (repeatable; default HS256 for a secret, "
            "RS256/ES256 for a public key, the key's own for a JWKS)",
        )
        # No defaults here: a --jwt-* option given without a key must be noticed.
        auth.add_argument(
            "--jwt-leeway", type=float, metavar="S", help="clock slack for exp/nbf (default 0)"
        )
        auth.add_argument(
            "--jwt-owner-claim", metavar="CLAIM", help="the claim naming the owner (default sub)"
        )

    demo = commands.add_parser(
        "demo",
        help="the offline demo agent over SQLite, with the chat page at /",
        description="Serve the offline demo agent (streams replies, asks before a "
        "'dangerous' tool, crashes on 'crash') with the chat page at /.",
    )
    common(demo, 120.0)
    where = demo.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help=f"SQLite file (default {_DEMO_DB})")
    where.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="instead of --db: sqlite:///path.db, postgresql://user@host/db, or memory",
    )
    demo.add_argument(
        "--word-delay", type=float, default=0.06, help="seconds between streamed words"
    )

    serve = commands.add_parser(
        "serve",
        help="serve your own router: python -m sessionvisor serve app.module:router",
        description="Serve a router (a FactoryRouter, or a callable taking "
        "(scope, conversation_id, request_opts)) over HTTP.",
    )
    serve.add_argument("router", help="module:attribute of the router")
    common(serve, 300.0)
    serve.add_argument(
        "--store",
        default="sqlite:///sessionvisor.db",
        help="sqlite:///path.db (default sqlite:///sessionvisor.db), postgresql://user@host/db, "
        "or memory (loses every conversation when the process stops)",
    )
    serve.add_argument(
        "--scope",
        default=None,
        metavar="MODULE:FUNCTION",
        help="scope_from_request(request) to use; the default (X-User header or ?user=) "
        "trusts the client and is for trying things out only",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Raises:
        SystemExit: on ``--help`` or bad arguments (argparse).
    """
    args = _parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401
        from starlette.applications import Starlette  # noqa: F401
    except ImportError:
        print(_HTTP_EXTRA, file=sys.stderr)
        return 2
    from .http import header_or_query_scope

    command = f"python -m sessionvisor {args.command}"
    try:
        verified = jwt_scope_from_args(args)
        cluster = cluster_from_args(args, args.store)
    except ValueError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    scope_from_request: Callable[..., Any]
    if args.command == "demo":
        from .http._demo import demo_router
        from .state import SQLiteStore

        router: Any = demo_router(word_delay=args.word_delay)
        scope_from_request = header_or_query_scope
        if args.store is None:
            db = args.db or _DEMO_DB
            store: StateStore = SQLiteStore(db)
            where = f"SQLite file {os.path.abspath(db)}"
        else:
            try:
                store = open_store(args.store)
            except (ImportError, ValueError) as exc:
                print(f"{command}: {exc}", file=sys.stderr)
                return 2
            where = f"store {redact_url(args.store)}"
    else:
        try:
            router = load_object(args.router)
            store = open_store(args.store)
            scope_from_request = load_object(args.scope) if args.scope else header_or_query_scope
        except (ImportError, AttributeError, ValueError) as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            return 2
        where = f"store {redact_url(args.store)}"
    if cluster is not None:
        where += f"; node {cluster.node_id} of the cluster at {redact_url(cluster.redis_url)}"
    if verified is not None:
        if getattr(args, "scope", None):
            print(
                f"python -m sessionvisor {args.command}: --scope and --jwt-* exclude each other",
                file=sys.stderr,
            )
            return 2
        scope_from_request = verified
    if args.log_format == "json":
        configure_json_logs(args.log_level)
    else:
        configure_console_logs(args.log_level)
    if scope_from_request is header_or_query_scope:
        if args.log_format == "json":
            import structlog

            structlog.get_logger("sessionvisor").warning(
                "unauthenticated_scope", detail=_UNAUTHENTICATED.removeprefix("WARNING: ")
            )
        else:
            print(_UNAUTHENTICATED, file=sys.stderr, flush=True)
    import anyio

    url = f"http://{_url_host(args.host)}:{args.port}/"
    banner = f"sessionvisor {args.command}: open {url} in a browser ({where}); Ctrl+C stops"
    try:
        anyio.run(
            _run,
            router,
            store,
            cluster,
            scope_from_request,
            args,
            banner,
            backend="asyncio",
        )
    except KeyboardInterrupt:
        pass
    except _Refused as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    return 0


class _Refused(Exception):
    """The supervisor refused its arguments (``main`` prints why and exits with 2)."""


_UNAUTHENTICATED = (
    "WARNING: the scope (who owns a conversation) comes from the client's own X-User "
    "header or ?user= parameter, which anyone can set: use it to try things out only. "
    "In production pass --jwt-secret-file/--jwt-public-key-file/--jwt-jwks-file, or "
    "--scope module:function with your own authentication."
)


_JWT_KEY_OPTIONS = "--jwt-secret-file, --jwt-public-key-file or --jwt-jwks-file"
# jwt_scope's parameters, as the options that set them.
_JWT_OPTION_OF = {
    "secret": "--jwt-secret-file",
    "public_key": "--jwt-public-key-file",
    "jwks": "--jwt-jwks-file",
    "algorithms": "--jwt-algorithm",
}


def jwt_scope_from_args(args: argparse.Namespace) -> Callable[..., Any] | None:
    """The ``jwt_scope`` the ``--jwt-*`` options describe, or None when none is given.

    Raises:
        ValueError: ``--jwt-*`` options without a key file (the server would check
            no token at all), a key file that cannot be read or holds no usable
            key, or an unsafe configuration (``--jwt-algorithm none``, an HMAC
            secret shorter than its hash); the message names the option.
    """
    files = {
        "secret_file": args.jwt_secret_file,
        "public_key_file": args.jwt_public_key_file,
        "jwks_file": args.jwt_jwks_file,
    }
    given = {k: v for k, v in files.items() if v}
    if not given:
        stray = [
            option
            for option, value in (
                ("--jwt-audience", args.jwt_audience),
                ("--jwt-issuer", args.jwt_issuer),
                ("--jwt-algorithm", args.jwt_algorithm),
                ("--jwt-leeway", args.jwt_leeway),
                ("--jwt-owner-claim", args.jwt_owner_claim),
            )
            if value is not None
        ]
        if stray:
            verb = "needs" if len(stray) == 1 else "need"
            raise ValueError(
                f"{', '.join(stray)} {verb} a key ({_JWT_KEY_OPTIONS}): without one no "
                "token would be checked at all"
            )
        return None
    from .http._jwt import JWTConfigError, jwt_scope

    try:
        return jwt_scope(
            **given,
            audience=args.jwt_audience,
            issuer=args.jwt_issuer,
            algorithms=args.jwt_algorithm,
            leeway=0.0 if args.jwt_leeway is None else args.jwt_leeway,
            owner_claim=args.jwt_owner_claim or "sub",
        )
    except JWTConfigError as exc:
        option = _JWT_OPTION_OF.get(exc.parameter, f"--jwt-{exc.parameter}")
        raise ValueError(f"{option}: {exc}") from None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _run(
    router: Any,
    store: StateStore,
    cluster: Cluster | None,
    scope_from_request: Callable[..., Any],
    args: argparse.Namespace,
    banner: str,
) -> None:
    import structlog
    import uvicorn

    from .http import close_event_streams, create_app
    from .sessions import SessionSupervisor

    class Server(uvicorn.Server):
        """uvicorn, ending the app's event streams first when it shuts down."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                if args.log_format == "json":
                    structlog.get_logger("sessionvisor").info("serving", detail=banner)
                else:
                    print(banner, flush=True)

        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn waits for open responses, and event streams never end by themselves.
            close_event_streams(app)
            await super().shutdown(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own version re-raises the signal after its shutdown, which
            # would interrupt the supervisor's drain below; this one does not.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    async with AsyncExitStack() as stack:
        aclose = getattr(store, "aclose", None)
        if aclose is not None:
            stack.push_async_callback(aclose)
        try:
            supervisor = SessionSupervisor(
                router,
                store=store,
                cluster=cluster,
                supervisor_opts={
                    "inactivity_timeout": args.inactivity_timeout,
                    "messages_per_minute_per_owner": args.messages_per_minute,
                    "max_running_per_owner": args.max_running_per_owner,
                },
            )
        except (TypeError, ValueError) as exc:
            raise _Refused(str(exc)) from exc
        await stack.enter_async_context(supervisor)
        app = create_app(supervisor, scope_from_request=scope_from_request)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            lifespan="on",
            timeout_graceful_shutdown=5,
            limit_concurrency=args.limit_concurrency,
            timeout_keep_alive=args.timeout_keep_alive,
            log_config=uvicorn_log_config(args.log_format, args.log_level),
        )
        await Server(config).serve()


if __name__ == "__main__":
    sys.exit(main())
