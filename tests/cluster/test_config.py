"""``Cluster``: a validated node configuration, and what it makes."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from sessionvisor.cluster import Cluster, EventStreams, Inbox, LeaseTable, Wakeups

URL = "redis://127.0.0.1:6390/0"


def test_defaults_name_the_node_after_the_host_and_process() -> None:
    cluster = Cluster(URL)

    assert cluster.node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert cluster.lease_ttl == 10.0
    assert cluster.renew_every == 2.5  # four renewals per TTL
    assert cluster.replay_buffer == 1000


def test_the_incarnation_is_one_fresh_id_per_process() -> None:
    a, b = Cluster(URL, node_id="n"), Cluster(URL, node_id="n")

    assert a.incarnation == b.incarnation
    assert len(a.incarnation) == 33 and a.incarnation[16] == "-"


def test_renewal_must_come_at_least_three_times_per_ttl() -> None:
    assert Cluster(URL, lease_ttl=6, renew_every=2).renew_every == 2.0
    with pytest.raises(ValueError, match=r"renew_every must be at most lease_ttl / 3 \(2 s\)"):
        Cluster(URL, lease_ttl=6, renew_every=2.5)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((42,), {}, TypeError, "redis_url"),
        (("postgresql://x/db",), {}, ValueError, "redis_url"),
        ((URL,), {"node_id": 7}, TypeError, "node_id"),
        ((URL,), {"node_id": ""}, ValueError, "node_id"),
        ((URL,), {"node_id": "a b"}, ValueError, "node_id"),
        ((URL,), {"node_id": "a\nb"}, ValueError, "node_id"),
        ((URL,), {"lease_ttl": 0}, ValueError, "lease_ttl"),
        ((URL,), {"lease_ttl": -1.0}, ValueError, "lease_ttl"),
        ((URL,), {"lease_ttl": float("inf")}, ValueError, "lease_ttl"),
        ((URL,), {"lease_ttl": True}, TypeError, "lease_ttl"),
        ((URL,), {"lease_ttl": "10"}, TypeError, "lease_ttl"),
        ((URL,), {"renew_every": 0}, ValueError, "renew_every"),
        ((URL,), {"lease_table": "bad-name"}, ValueError, "lease_table"),
        ((URL,), {"inbox_table": "a.b.c"}, ValueError, "inbox_table"),
        ((URL,), {"inbox_table": "sessionvisor_leases"}, ValueError, "both"),
        ((URL,), {"prefix": ""}, ValueError, "prefix"),
        ((URL,), {"replay_buffer": 0}, ValueError, "replay_buffer"),
        ((URL,), {"replay_buffer": 2.0}, TypeError, "replay_buffer"),
        ((URL,), {"stream_ttl": 0}, ValueError, "stream_ttl"),
    ],
)
def test_a_bad_argument_is_named(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Cluster(*args, **kwargs)


def test_the_repr_hides_the_redis_password() -> None:
    text = repr(Cluster("redis://user:s3cret@cache:6379/0", node_id="n"))
    assert "s3cret" not in text and "cache:6379" in text


def test_it_makes_the_data_layer_with_its_settings() -> None:
    cluster = Cluster(
        URL, node_id="n-1", lease_ttl=3, lease_table="app.leases", inbox_table="app.inbox"
    )

    leases = cluster.lease_table_for("postgresql://db/app", store_table="app.convs")
    inbox = cluster.inbox_for("postgresql://db/app")
    streams = cluster.event_streams()

    assert isinstance(leases, LeaseTable)
    assert (leases.node_id, leases.incarnation, leases.ttl, leases.table) == (
        "n-1",
        cluster.incarnation,
        3.0,
        "app.leases",
    )
    assert isinstance(inbox, Inbox) and inbox.table == "app.inbox"
    assert isinstance(streams, EventStreams)
    assert (streams.maxlen, streams.ttl) == (1000, 86400.0)
    assert Cluster(URL, stream_ttl=None).event_streams().ttl is None
    assert isinstance(cluster.wakeups(), Wakeups)


def test_without_the_extra_the_pieces_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # None in sys.modules makes the import raise ImportError.
    for name in ("psycopg", "psycopg_pool", "redis", "redis.asyncio"):
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]

    cluster = Cluster(URL)  # the settings need neither
    with pytest.raises(ImportError, match=r"pip install 'sessionvisor\[cluster\]'"):
        cluster.lease_table_for("postgresql://db/app")
    with pytest.raises(ImportError, match=r"pip install 'sessionvisor\[cluster\]'"):
        cluster.inbox_for("postgresql://db/app")
    with pytest.raises(ImportError, match=r"pip install 'sessionvisor\[cluster\]'"):
        cluster.event_streams()
