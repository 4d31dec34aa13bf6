"""Telegram channels as sources, through their public preview pages.

`https://t.me/s/NAME` shows a channel's latest messages as HTML; older ones
are on `?before=ID`. Each message is a block that starts at its
`data-post="NAME/ID"` attribute. A source of this kind reads the newest page
and follows older pages up to `MAX_PAGES`; on later runs it stops at the
newest message it already read, so only new messages are downloaded and
parsed, and their configs join the ones kept from earlier runs.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

from configstream.models import ParseReport, Proxy

# Pages read per run: the newest and this many minus one older ones.
MAX_PAGES = 3
# Configs kept per channel across runs, newest first.
MAX_KEPT = 2000
_POST = re.compile(r'data-post="[^"/<>]{1,64}/(\d{1,12})"')


def is_channel_url(url: str) -> bool:
    """Whether `url` is a channel preview page (`t.me/s/NAME`)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname in {"t.me", "telegram.me"} and parts.path.startswith("/s/")


def messages(page: str) -> list[tuple[int, str]]:
    """(id, html) of every message on a preview page, in page order."""
    starts = [(match.start(), int(match.group(1))) for match in _POST.finditer(page)]
    found = []
    for index, (start, post) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(page)
        found.append((post, page[start:end]))
    return found


def older_page(url: str, before: int) -> str:
    """The URL of the page of messages older than `before`."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query)
        if key != "before"
    ]
    query.append(("before", str(before)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def page_of(blocks: Sequence[str]) -> bytes:
    """The message blocks as one HTML body for the subscription reader."""
    return ("<html><body>\n" + "\n".join(blocks) + "\n</body></html>\n").encode()


def joined(new: ParseReport, kept: ParseReport) -> ParseReport:
    """New messages' configs first, then the kept ones, each once, capped."""
    proxies: dict[Proxy, Proxy] = {}
    for proxy in [*new.proxies, *kept.proxies]:
        proxies.setdefault(proxy, proxy)
        if len(proxies) >= MAX_KEPT:
            break
    return ParseReport(
        shape=new.shape,
        proxies=list(proxies),
        rejections=new.rejections,
        found=new.found,
        lines=new.lines,
        ignored_lines=new.ignored_lines,
    )
