"""Run a module with redis-py's pure-Python RESP parser: ``python nohiredis.py -m freshviews serve ...``.

redis-py uses hiredis whenever it imports; a ``None`` entry in ``sys.modules`` makes that import fail, so the
client falls back to its own parser, with nothing else changed. The parser in use is printed to stderr (the
process log) so the benchmark can check it.
"""

from __future__ import annotations

import runpy
import sys

sys.modules["hiredis"] = None  # type: ignore[assignment]

from redis.asyncio.connection import DefaultParser  # noqa: E402


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: nohiredis.py -m MODULE [ARGS...]")
    print(f"redis parser: {DefaultParser.__name__}", file=sys.stderr, flush=True)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
