"""The exception tree of ConfigStream.

::

    ConfigStreamError
    ├── SettingsError      sources.yml or a command-line value is unusable
    ├── SourceError        a subscription body could not be read as any shape
    ├── LinkError          one share link or config entry could not be parsed
    ├── CoreError          the sing-box core is missing, broken or died
    └── OutputError        an output file could not be written

Dead proxies and unreachable sources are expected outcomes and are recorded in
result models, not raised.
"""

from __future__ import annotations


class ConfigStreamError(Exception):
    """Root of every error ConfigStream raises on purpose."""


class SettingsError(ConfigStreamError):
    """A settings file or option is invalid; `where` names the entry."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class SourceError(ConfigStreamError):
    """A subscription body is not a node list in any known shape."""

    def __init__(self, message: str, source: str = "") -> None:
        super().__init__(message)
        self.source = source


class LinkError(ConfigStreamError):
    """One link or entry could not be parsed.

    `reason` is a short stable key used to count rejections in the stats
    (for example ``unsupported-scheme``); the message adds detail but never a
    credential.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CoreError(ConfigStreamError):
    """The sing-box core could not be used."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class OutputError(ConfigStreamError):
    """An output file could not be written."""
