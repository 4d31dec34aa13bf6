"""ConfigStream: fetch, parse, test and publish free proxy configurations."""

from configstream.errors import ConfigStreamError
from configstream.models import Entry, ProbeResult, Proxy, Status
from configstream.parse import parse_body, parse_link

__version__ = "0.1.0"

__all__ = [
    "ConfigStreamError",
    "Entry",
    "ProbeResult",
    "Proxy",
    "Status",
    "__version__",
    "parse_body",
    "parse_link",
]
