"""The command line of every job in jobs/: parse, run, and turn a bad request
(a `cgc_ray.errors.UserError`: an option, a file, the data, a limit the user
set) into one line on stderr with exit code 2; every other exception is a
fault and keeps its traceback."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from .errors import UserError


def main(parse: Callable[[list[str] | None], Any], run: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    """Exit code 0; 2 for a UserError (ConfigError, EvalError, DataError,
    TooManyBadImages, NoTrainingBatch, ...); 1 when `run` returns a count of
    failed parts > 0. Anything else propagates with its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(parse(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if isinstance(result, int) and result > 0 else 0
