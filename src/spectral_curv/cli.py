"""``spectral-curv`` console script: ``spectral-curv bench precond [options]``.

The benchmark's own options are documented by ``spectral-curv bench precond --help``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point: dispatch ``bench ...`` to :mod:`spectral_curv.bench`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: spectral-curv bench precond [options]  (details: ... precond --help)")
        return 0 if args else 2
    if args[0] == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(args[1:])
    print(f"spectral-curv: unknown command {args[0]!r} (known: bench)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
