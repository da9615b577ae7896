"""The lease table's SQL statements (``LeaseTable`` composes them with its table names).

``{t}`` is the lease table, ``{s}`` the store's table and ``{i}`` the inbox's.
"""

__all__ = [
    "ACQUIRE",
    "ADD_COLUMNS",
    "CLAIM",
    "CLEAR_RETRY",
    "CREATE_INDEX",
    "CREATE_TABLE",
    "EARLIER",
    "EPOCH_AFTER_STORE",
    "FORGET",
    "FORGET_RUNS",
    "LOCK",
    "LOOK",
    "OWNER",
    "RELEASE",
    "RENEW",
    "WORK",
    "WORK_INBOX_ONLY",
    "WORK_WITH_INBOX",
]

# The table, created on first use: a row per conversation a node ever took.
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {t} ("
    "conversation_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, "
    "incarnation TEXT NOT NULL, epoch BIGINT NOT NULL, "
    "lease_until TIMESTAMPTZ NOT NULL)"
)
# ``{i}``: the index's name (the table's name and ``_until``).
CREATE_INDEX = "CREATE INDEX IF NOT EXISTS {i} ON {t} (lease_until)"
# Added to tables made before them. ``lock_key`` NULL: the row's holder took no
# advisory lock, so only its lease_until tells whether it lives. ``failures`` and
# ``retry_at``: the sweeper's back-off for a conversation whose wake keeps failing.
# ``{k}``: the sequence of lock keys; ``{r}``: the runs that hold (or held) a lock.
ADD_COLUMNS = [
    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS lock_key INTEGER, "
    "ADD COLUMN IF NOT EXISTS failures INTEGER NOT NULL DEFAULT 0, "
    "ADD COLUMN IF NOT EXISTS retry_at TIMESTAMPTZ",
    "CREATE SEQUENCE IF NOT EXISTS {k} AS integer",
    "CREATE TABLE IF NOT EXISTS {r} (lock_key INTEGER PRIMARY KEY, node_id TEXT NOT NULL, "
    "incarnation TEXT NOT NULL, locked_at TIMESTAMPTZ NOT NULL DEFAULT now())",
]

# Liveness (``_liveness.py``): each run of a node holds a session-level advisory
# lock ``(namespace, key)`` on a connection of its own, the key drawn from the
# sequence (never reused, so a key that disappeared never comes back), and stamps
# it on the lease rows it takes. PostgreSQL drops the lock when that connection
# ends: a crashed process's key disappears from ``pg_locks`` at once. The key is
# drawn, locked and listed in ``{r}`` in one statement, so a listed key was held
# before anyone could read its row: listed and not held means it was dropped.
LOCK = """
WITH drawn AS (SELECT nextval(%(seq)s::regclass)::int4 AS key),
locked AS (SELECT key FROM drawn WHERE pg_try_advisory_lock(%(ns)s::int4, key))
INSERT INTO {r} (lock_key, node_id, incarnation)
SELECT key, %(node)s, %(inc)s FROM locked
RETURNING lock_key
"""
# Every listed key, and whether it is held now (pg_locks read once).
LOOK = """
SELECT r.lock_key, h.key IS NOT NULL FROM {r} r
LEFT JOIN (
    SELECT objid::bigint AS key FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::bigint = %(ns)s
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
) h ON h.key = r.lock_key
"""
# Keys gone for longer than any lease naming them can last.
FORGET_RUNS = "DELETE FROM {r} WHERE lock_key = ANY(%(keys)s::int4[])"

# One statement takes a conversation: a new row (epoch 1), or the existing row
# when its lease ran out, or when this node_id holds it with this incarnation
# or an earlier one (a restarted node takes its leases back without waiting
# out the TTL), or when its holder's advisory lock is known gone for good
# (``dead``: keys missing from pg_locks for the grace period, see
# ``_liveness.py``). Every take increments the epoch. Only the database's clock is
# read, so the nodes' clocks may disagree. Under concurrency the losing INSERT
# waits for the winner's row, then re-evaluates the WHERE on it and returns
# nothing: of N nodes taking one conversation, exactly one gets a row back.
ACQUIRE = """
INSERT INTO {t} AS l (conversation_id, node_id, incarnation, epoch, lease_until, lock_key)
VALUES (%(cid)s, %(node)s, %(inc)s, 1, now() + make_interval(secs => %(ttl)s), %(key)s::int4)
ON CONFLICT (conversation_id) DO UPDATE
SET node_id = EXCLUDED.node_id, incarnation = EXCLUDED.incarnation,
    epoch = l.epoch + 1, lease_until = EXCLUDED.lease_until, lock_key = EXCLUDED.lock_key
WHERE l.lease_until < now() OR l.lock_key = ANY(%(dead)s::int4[])
    OR (l.node_id = EXCLUDED.node_id
        AND l.incarnation COLLATE "C" <= EXCLUDED.incarnation COLLATE "C")
RETURNING epoch
"""

# Renewal keeps the epoch: only this incarnation can hold a row with its
# incarnation, so a row that still names it was not taken by anyone since. A
# released row stays released: a renewal sent before the release but run after
# it must not hand the conversation back to a node that let it go.
RENEW = """
UPDATE {t} SET lease_until = now() + make_interval(secs => %(ttl)s)
WHERE conversation_id = ANY(%(ids)s) AND node_id = %(node)s AND incarnation = %(inc)s
    AND lease_until > '-infinity'
RETURNING conversation_id
"""

# A released row is kept (expired at once), not deleted: the epoch must never
# go back, or the next owner's epoch would sit below the one the store holds.
RELEASE = """
UPDATE {t} SET lease_until = '-infinity'
WHERE conversation_id = ANY(%(ids)s) AND node_id = %(node)s AND incarnation = %(inc)s
RETURNING conversation_id
"""

# A first lease (epoch 1) under which nothing was stored leaves nothing behind
# (a start the router, the factory or the owner check refused): its row and the
# store's placeholder go, in one statement. No earlier owner exists whose stale
# write the placeholder would have to refuse, and the next owner starts at
# epoch 1 again. A row that carries the sweeper's back-off (a claim whose wake
# failed) stays, or the next sweep would claim it again at once. Returns one row
# when it deleted the lease.
FORGET = """
WITH mine AS (
    DELETE FROM {t}
    WHERE conversation_id = %(cid)s AND node_id = %(node)s AND incarnation = %(inc)s
        AND epoch = 1 AND failures = 0
        AND NOT EXISTS (SELECT 1 FROM {s} WHERE id = %(cid)s AND version > 0)
    RETURNING conversation_id
),
placeholder AS (DELETE FROM {s} s USING mine WHERE s.id = mine.conversation_id AND s.version = 0)
SELECT conversation_id FROM mine
"""

# The leases an earlier run of this node still holds (it was killed, or
# restarted faster than its leases ran out): the new run takes them back.
EARLIER = """
SELECT conversation_id FROM {t}
WHERE node_id = %(node)s AND incarnation COLLATE "C" < %(inc)s COLLATE "C"
    AND lease_until >= now()
"""
OWNER = """
SELECT node_id, incarnation, epoch, lease_until, EXTRACT(EPOCH FROM lease_until - now())
FROM {t} WHERE conversation_id = %s AND lease_until >= now()
"""

# The sweeper's claim. ``work`` is every conversation with something a start
# would do: the store's unanswered flag (``state.is_unanswered``, read through
# its partial index: a save made mid-turn, messages to run, an answer whose
# turn a stop cut short; never a queue held behind a question, a pause, an
# error, a cancel or a stop, where waking would run nothing), and, when the
# table knows the inbox, pending inbox
# rows (a command posted just before its owner died). A lease whose back-off
# (``retry_at``) has not run out is left alone: every claim sets it, doubling
# with the claims since the last wake that worked, which clears it. Expired
# leases of those are locked with SKIP LOCKED, so the
# sweepers of several nodes split them instead of queueing on the same rows;
# conversations with waiting work and no lease row at all (stored before the
# cluster mode) are taken too, their first epoch above the store's. Two
# sweepers inserting the same one: the second's ON CONFLICT DO NOTHING finds
# the first's row and returns nothing.
WORK = "SELECT id AS cid FROM {s} WHERE unanswered"
WORK_WITH_INBOX = WORK + " UNION SELECT conversation_id FROM {i}"
WORK_INBOX_ONLY = "SELECT DISTINCT conversation_id AS cid FROM {i}"
EPOCH_AFTER_STORE = "COALESCE((SELECT s.epoch FROM {s} s WHERE s.id = w.cid), 0) + 1"
CLAIM = """
WITH work AS ({work}),
expired AS (
    SELECT l.conversation_id FROM {t} l JOIN work w ON w.cid = l.conversation_id
    WHERE (l.lease_until < now() OR l.lock_key = ANY(%(dead)s::int4[]))
        AND (l.retry_at IS NULL OR l.retry_at <= now())
    ORDER BY l.lease_until LIMIT %(limit)s
    FOR UPDATE OF l SKIP LOCKED
),
taken AS (
    UPDATE {t} AS l SET node_id = %(node)s, incarnation = %(inc)s, epoch = l.epoch + 1,
        lease_until = now() + make_interval(secs => %(ttl)s), lock_key = %(key)s::int4,
        failures = l.failures + 1,
        retry_at = now() + make_interval(
            secs => LEAST(%(first)s * power(2, LEAST(l.failures, 30)), %(most)s))
    FROM expired WHERE l.conversation_id = expired.conversation_id
    RETURNING l.conversation_id, l.epoch
),
orphans AS (
    INSERT INTO {t} (conversation_id, node_id, incarnation, epoch, lease_until, lock_key,
        failures, retry_at)
    SELECT w.cid, %(node)s, %(inc)s,
        {first_epoch},
        now() + make_interval(secs => %(ttl)s), %(key)s::int4,
        1, now() + make_interval(secs => LEAST(%(first)s, %(most)s))
    FROM work w
    WHERE NOT EXISTS (SELECT 1 FROM {t} l WHERE l.conversation_id = w.cid)
    LIMIT GREATEST(%(limit)s - (SELECT count(*) FROM expired), 0)
    ON CONFLICT (conversation_id) DO NOTHING
    RETURNING conversation_id, epoch
)
SELECT conversation_id, epoch FROM taken
UNION ALL SELECT conversation_id, epoch FROM orphans
"""
# The wake of a claimed lease worked (or found nothing to do): no back-off.
CLEAR_RETRY = """
UPDATE {t} SET failures = 0, retry_at = NULL
WHERE conversation_id = %(cid)s AND epoch = %(epoch)s AND failures > 0
"""
