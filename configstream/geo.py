"""Country of each proxy from a MaxMind-format database."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from types import TracebackType

import maxminddb

log = logging.getLogger(__name__)


def default_database() -> Path:
    """The GeoLite2 country database that `maxminddb-geolite2` ships."""
    from _maxminddb_geolite2 import geolite2_database

    return Path(geolite2_database())


def is_country_code(text: str) -> bool:
    """Two ASCII letters: the only country codes that may name a file
    (countries/DE.txt); anything else from a database is ignored."""
    return len(text) == 2 and text.isascii() and text.isalpha()


class GeoIP:
    """Looks up ISO 3166 alpha-2 country codes; None when unknown."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_database()
        self._reader = maxminddb.open_database(str(self.path))

    def country(self, address: str | None) -> str | None:
        """The country of an IP address; hostnames and misses give None."""
        if not address:
            return None
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return None
        record = self._reader.get(address)
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            entry = record.get(key)
            code = entry.get("iso_code") if isinstance(entry, dict) else None
            # The code names files (countries/DE.txt): only two letters pass.
            if (
                isinstance(code, str)
                and len(code) == 2
                and code.isascii()
                and code.isalpha()
            ):
                return code.upper()
        return None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> GeoIP:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
