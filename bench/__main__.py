"""`python -m bench facts|soak [options]`: the benchmarks that live here (the others
still run as `mediabot bench`, `bench-memory` and `bench-recommend`)."""

from __future__ import annotations

import sys

from bot.__main__ import main

if __name__ == "__main__":
    names = {"facts": "bench-facts", "soak": "bench-soak"}
    args = sys.argv[1:]
    if not args or args[0] not in names:
        print(f"usage: python -m bench {{{','.join(names)}}} [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main([names[args[0]], *args[1:]]))
