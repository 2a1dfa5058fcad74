"""The command line of every job in jobs/: parse, run, and turn a bad request
into one line on stderr (exit code 2) instead of a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable


def main(parse: Callable[[list[str] | None], Any], run: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    """Exit code 0; 2 for a bad request (a ValueError or missing file, raised
    before any work starts); 1 when `run` returns a count of failed parts > 0."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(parse(argv))
    except (ValueError, FileNotFoundError) as e:  # ConfigError and EvalError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if isinstance(result, int) and result > 0 else 0
