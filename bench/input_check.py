"""What the storable-JSON check costs, against parsing the same body in the same run.

Every body a client sends is parsed (``json.loads``, C) and then walked once by
``sessionvisor._json.json_problem`` (Python, no recursion). This prints, for
bodies of about 1 MiB in the shapes that cost the walk the most, the median time
of each and their ratio, so the figure does not depend on how fast this machine is.

    .venv/bin/python bench/input_check.py            # a few seconds
    .venv/bin/python bench/input_check.py --repeat 21
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from sessionvisor._json import json_problem

MIB = 1 << 20


def _fill(unit: str) -> bytes:
    """A JSON array of ``unit`` repeated to about 1 MiB."""
    count = MIB // (len(unit) + 1)
    return ("[" + ",".join([unit] * count) + "]").encode()


SHAPES: dict[str, bytes] = {
    "small ints": _fill("7"),
    "short strings": _fill('"ab"'),
    "text parts": _fill('{"type":"text","text":"hello there"}'),
    "empty arrays": _fill("[]"),
    "nested 60 deep, repeated": _fill("[" * 30 + "{}" + "]" * 30),
    "one long string": json.dumps("x" * (MIB - 2)).encode(),
    "non-ASCII text": _fill('"déjà vu — ça va"'),
}


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="runs per figure (median)")
    args = parser.parse_args()
    print(f"{'body (about 1 MiB)':<28} {'json.loads':>11} {'check':>9} {'check/loads':>12}")
    for name, body in SHAPES.items():
        value = json.loads(body)
        assert json_problem(value) is None, name
        loads = _median(lambda body=body: json.loads(body), args.repeat)
        check = _median(lambda value=value: json_problem(value), args.repeat)
        print(f"{name:<28} {loads * 1000:>9.1f} ms {check * 1000:>6.1f} ms {check / loads:>11.2f}x")


if __name__ == "__main__":
    main()
