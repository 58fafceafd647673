"""The one error root: every error podflame raises on purpose is a `PodflameError`.

Subclasses say what kind of failure it is, so the CLI (exit codes) and the server (HTTP statuses)
map them in one place each instead of matching messages or catching unrelated roots.
"""

from __future__ import annotations


class PodflameError(Exception):
    """A failure podflame explains to its user; anything else is a bug."""


class InvalidInput(PodflameError, ValueError):
    """Bytes, text or options from outside that podflame will not accept (HTTP 400, exit 2)."""


class TooLarge(InvalidInput):
    """Input over a stated bound, refused before it is allocated (HTTP 413)."""


class NotFound(PodflameError, LookupError):
    """A thing asked for by name that does not exist (HTTP 404)."""


class Unavailable(PodflameError):
    """A resource is closed, gone or not reachable now; retrying later may work (HTTP 503)."""


class SystemUnsupported(PodflameError):
    """This host cannot do what was asked: no BPF, no permission, no kernel headers (exit 3)."""


class BinaryFormatError(InvalidInput):
    """An ELF, DWARF, CFI or interpreter structure that does not parse as its format says."""


class Unauthorized(PodflameError, PermissionError):
    """A request without a valid token for what it asks (HTTP 401)."""


class Forbidden(PodflameError, PermissionError):
    """A request this server refuses whoever sends it: another origin or Host (HTTP 403)."""
