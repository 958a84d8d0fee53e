"""Plain HTTP for OCSP and CRL downloads. The gateway runs monkey-patched, so ``urllib`` is cooperative:
a slow responder holds only the greenlet of the handshake that asked."""

from __future__ import annotations

import urllib.error
import urllib.request

import gevent

__all__ = ["FetchError", "http_get", "http_post"]

MAX_BODY = 16 * 1024 * 1024  # a CRL larger than this is refused rather than buffered


class FetchError(Exception):
    """The URL could not be fetched: refused, timed out, not HTTP 200, too large."""


def _request(request: urllib.request.Request, timeout: float) -> bytes:
    url = request.full_url
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"{url}: only http:// and https:// URLs are fetched")
    try:
        with (
            gevent.Timeout(timeout, FetchError(f"{url}: no answer within {timeout}s")),
            urllib.request.urlopen(request, timeout=timeout) as resp,
        ):
            body: bytes = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"{url}: {exc}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"{url}: answer larger than {MAX_BODY} bytes")
    return body


def http_get(url: str, timeout: float) -> bytes:
    return _request(urllib.request.Request(url, method="GET"), timeout)


def http_post(url: str, data: bytes, content_type: str, accept: str, timeout: float) -> bytes:
    headers = {"Content-Type": content_type, "Accept": accept}
    return _request(urllib.request.Request(url, data=data, headers=headers, method="POST"), timeout)
