"""Deadlines for what an HTTP client sends: its request line and headers, then its body.

Without them a client that sends part of a request keeps its connection for ever, and past uvicorn's
limit_concurrency every other client gets 503. uvicorn has no header deadline and no body deadline, so the
first is a subclass of its HTTP protocol and the second wraps an ASGI `receive`.
"""

import asyncio
import json

MAX_HEADER_BYTES = 64 << 10  # a request line and headers larger than this get 431 (uvicorn's httptools takes any)


def _raw_response(status, message):
    """A whole JSON error response, as bytes for a transport: sent where no ASGI app is running yet."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def header_deadline_protocol(header_timeout_s):
    """uvicorn's HTTP protocol with a deadline on each request's line and headers, which uvicorn has no setting
    for: a client that connects, or sends the first bytes of its next request, and has not sent all of the
    headers `header_timeout_s` later gets a 408 and its connection is closed. Without it, clients that send
    part of a header keep their connections for ever, and past uvicorn's limit_concurrency all others get 503.
    Headers over MAX_HEADER_BYTES get 431, so that what a client sends within the deadline stays bounded."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    too_late = _raw_response(
        "408 Request Timeout",
        f"the request line and headers did not arrive within {header_timeout_s:g} s; send the request whole",
    )
    too_large = _raw_response(
        "431 Request Header Fields Too Large",
        f"the request line and headers are larger than {MAX_HEADER_BYTES} bytes; send shorter headers",
    )

    class HeaderDeadlineProtocol(AutoHTTPProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._header_deadline = None
            self._cycle_before_headers = None
            self._header_bytes = 0

        def connection_made(self, transport):
            super().connection_made(transport)
            self._expect_headers()

        def data_received(self, data):
            if self._header_deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._expect_headers()
            super().data_received(data)
            if self._header_deadline is None:
                return
            if self.cycle is not self._cycle_before_headers:
                self._stop_header_deadline()  # the headers are in: the request has its cycle
                return
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(too_large)

        def connection_lost(self, exc):
            self._stop_header_deadline()
            super().connection_lost(exc)

        def _expect_headers(self):
            self._cycle_before_headers, self._header_bytes = self.cycle, 0
            self._header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_late)

        def _stop_header_deadline(self):
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_late(self):
            self._header_deadline = None
            self._refuse(too_late)

        def _refuse(self, response):
            self._stop_header_deadline()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return HeaderDeadlineProtocol


class BodyTooSlow(Exception):
    """The request body did not arrive within the body deadline."""


def receive_within(receive, seconds):
    """`receive` for a request body that must be complete `seconds` after the request's headers; after
    the body (a later call waits for the client to disconnect), without a deadline."""
    deadline = asyncio.get_running_loop().time() + seconds
    complete = False

    async def receive_in_time():
        nonlocal complete
        if complete:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            raise BodyTooSlow from None
        complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_in_time
