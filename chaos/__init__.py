"""A randomized fault checker for sessionvisor, in the style of Jepsen.

It drives real server processes (``python -m sessionvisor demo``) through the
public HTTP API with a seeded random client (:mod:`chaos.model`), injects
faults with a seeded nemesis (:mod:`chaos.nemesis`: ``kill -9`` and restart on
the same store), records every operation in a history (invoke, then ok, fail
or info=unknown), lets the system settle, and checks the guarantees from the
history and the final state of every conversation (:mod:`chaos.check`).

Run it with ``python -m chaos.run --seed 7 --minutes 2 --store sqlite`` (see
``--help``) or ``make chaos``. ``python -m chaos.check HISTORY.jsonl`` checks
a saved history again.
"""
