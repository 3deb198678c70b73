"""``python -m bilevel``: the ``bilevel`` command line (see :mod:`bilevel.cli`)."""

from __future__ import annotations

import sys


def _main() -> None:
    try:
        from bilevel.cli import main
    except ImportError as exc:  # typer or matplotlib missing
        sys.stderr.write(
            f"bilevel: the command line needs the 'cli' extra ({exc}); "
            "install it with: pip install 'bilevel[cli]'\n"
        )
        raise SystemExit(1) from None
    main()


if __name__ == "__main__":
    _main()
