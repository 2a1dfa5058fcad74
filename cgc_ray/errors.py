"""The project's one error policy: a `UserError` is a request the user can fix
(an option, a file, the data, a limit they set); the jobs print its one-line
message and exit 2, without a traceback. Every other exception is a fault and
keeps its traceback (`cgc_ray.entry.main`)."""

from __future__ import annotations


class UserError(ValueError):
    """A request the user can fix; the message names the option or file."""


class DataError(UserError):
    """The data or its annotation cannot be used as given; names the file and field."""


class MissingData(DataError, FileNotFoundError):
    """A file or folder the request names does not exist."""
