"""A bounded HTTP/1.1 server: asyncio for the connections, h11 for the protocol, a thread pool for the work.

Why not the standard library's ThreadingHTTPServer: it gives every connection a thread for as long as the client
keeps it open, trusts Content-Length, and has no deadline for receiving a request.  Why not uvicorn: it bounds
only the idle time between requests, reset by every byte received (a client trickling one byte at a time holds a
connection for ever), and the time to receive a request is the bound a public listener needs most.  Here every limit of ``limits.Limits`` is enforced in one
place, ``_Connection``:

* listen backlog ``rest_backlog``; at most ``rest_max_connections`` open connections (the next is answered 503
  and closed);
* a connection with no request in flight is closed after ``rest_idle_timeout``; a request (headers and body) must
  arrive within ``rest_request_timeout`` of its first byte (else 408 and close);
* request line + headers at most ``rest_max_header_bytes`` (else 431); a body at most ``rest_max_body_bytes``: a
  larger Content-Length is answered 413 before any of the body is read, a chunked body is cut off at the limit;
  h11 rejects malformed framing (a non-numeric or conflicting Content-Length is 400);
* the bodies held at once, over all connections, are at most ``rest_max_inflight_bytes`` (else 503);
* requests run on ``workers`` threads; an answer not ready after ``rest_request_timeout`` is a 504 (the thread
  finishes its work, the pool stays bounded).

``handler(method, path, body) -> (status, payload, content_type)`` runs on the pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import h11

from odal.serving.limits import Limits

log = logging.getLogger(__name__)

Handler = Callable[[str, str, bytes], tuple[int, bytes, str | None]]
_READ_CHUNK = 256 * 1024


class _Refused(Exception):
    """The request cannot be taken: answer ``status`` with ``message`` and close the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class _Connection:
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server, self.limits = server, server.limits
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.rest_max_header_bytes)
        self.held = 0  # body bytes this connection counts against the server's in-flight budget
        self._deadline: float | None = None  # when the request being received must be complete (loop time)

    async def run(self) -> None:
        while True:
            try:
                request = await self._next_request()
                if request is None:
                    return
                body = await self._body(request)
            except _Refused as refused:
                await self._send(refused.status, _error_body(str(refused)), "application/json", close=True)
                await self._linger()
                return
            except h11.RemoteProtocolError as exc:
                await self._send(exc.error_status_hint, _error_body(f"Malformed HTTP request: {exc}"[:200]),
                                 "application/json", close=True)
                return
            status, payload, content_type = await self._answer(request, body)
            del body
            self.release()
            await self._send(status, payload, content_type)
            if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    async def _event(self, deadline: float | None, idle: bool):
        """The next h11 event, reading as needed: before a request's first byte the idle timeout applies, after
        it the request's deadline (``deadline`` is set once the first byte arrived)."""
        loop = asyncio.get_running_loop()
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event, deadline
            if idle and deadline is None:
                timeout = self.limits.rest_idle_timeout
            else:
                timeout = deadline - loop.time()
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_CHUNK), max(timeout, 0))
            except TimeoutError:
                if deadline is None:
                    return None, None  # idle: close quietly
                raise _Refused(408, "Request Timeout: the request did not arrive in time") from None
            if deadline is None and data:
                deadline = loop.time() + self.limits.rest_request_timeout
            self.h11.receive_data(data)

    async def _next_request(self) -> h11.Request | None:
        event, self._deadline = await self._event(None, idle=True)
        if event is None or isinstance(event, h11.ConnectionClosed):
            return None
        if self._deadline is None:  # a pipelined request that was already read
            self._deadline = asyncio.get_running_loop().time() + self.limits.rest_request_timeout
        length = next((int(v) for k, v in event.headers if k == b"content-length"), 0)
        if length > self.limits.rest_max_body_bytes:
            raise _Refused(413, f"Payload Too Large: the body may have at most {self.limits.rest_max_body_bytes} "
                                f"bytes, Content-Length says {length}")
        return event

    async def _body(self, request: h11.Request) -> bytes:
        chunks, size = [], 0
        if self.h11.they_are_waiting_for_100_continue:
            self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            event, _ = await self._event(self._deadline, idle=False)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.rest_max_body_bytes:
                    raise _Refused(413, f"Payload Too Large: the body may have at most "
                                        f"{self.limits.rest_max_body_bytes} bytes")
                if self.server.inflight + len(event.data) > self.limits.rest_max_inflight_bytes:
                    raise _Refused(503, "Service Unavailable: too many request bytes in flight; retry")
                self.server.inflight += len(event.data)
                self.held += len(event.data)
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed or None mid-body
                raise _Refused(400, "the connection closed before the body was complete")

    def release(self) -> None:
        self.server.inflight -= self.held
        self.held = 0

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes, str | None]:
        loop = asyncio.get_running_loop()
        method, target = request.method.decode("ascii", "replace"), request.target.decode("ascii", "replace")
        work = loop.run_in_executor(self.server.pool, self.server.handler, method, target, body)
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.limits.rest_request_timeout)
        except TimeoutError:
            work.cancel()  # not started yet: it never will be (a running one finishes on its bounded pool)
            return 504, _error_body("Deadline Exceeded: the request took too long"), "application/json"
        except Exception as exc:  # noqa: BLE001 - an answer, never a dropped connection
            log.exception("REST %s failed", method)
            return 500, _error_body(f"Internal error: {type(exc).__name__}"), "application/json"

    async def _linger(self) -> None:
        """After refusing a request whose body may still be on its way: stop writing, then read and discard for
        a moment, so that the client reads the answer instead of a reset (nothing is kept: no memory bound)."""
        try:
            self.writer.write_eof()
            loop = asyncio.get_running_loop()
            until = loop.time() + min(self.limits.rest_request_timeout, 5.0)
            while loop.time() < until and await asyncio.wait_for(self.reader.read(_READ_CHUNK),
                                                                 until - loop.time()):
                pass
        except (OSError, TimeoutError, RuntimeError):
            pass

    async def _send(self, status: int, payload: bytes, content_type: str | None, close: bool = False) -> None:
        headers = [("Content-Length", str(len(payload))), ("Server", "odal-serve")]
        if content_type:
            headers.append(("Content-Type", content_type))
        if close:
            headers.append(("Connection", "close"))
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers))
            data += self.h11.send(h11.Data(data=payload)) + self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        self.writer.write(data)
        try:  # a client that does not read its answer is dropped, not waited for
            await asyncio.wait_for(self.writer.drain(), self.limits.rest_request_timeout)
        except TimeoutError:
            raise ConnectionError("the client did not read its answer in time") from None


class HttpServer:
    """``handler`` served on ``host:port`` by an event loop on its own thread; ``close()`` stops and joins it."""

    def __init__(self, handler: Handler, host: str, port: int, limits: Limits):
        self.handler, self.limits = handler, limits
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="odal-rest")
        self._loop = asyncio.new_event_loop()
        self._open = 0
        self.inflight = 0  # body bytes held by all connections (only touched on the loop thread)
        self._server = self._loop.run_until_complete(asyncio.start_server(
            self._connection, host, port, backlog=limits.rest_backlog, reuse_address=True))
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name="odal-rest-loop", daemon=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        connection = _Connection(self, reader, writer)
        try:
            if self._open > self.limits.rest_max_connections:
                await connection._send(503, _error_body("Service Unavailable: too many open connections"),
                                       "application/json", close=True)
                return
            await connection.run()
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001 - one connection's failure never reaches the loop
            log.exception("REST connection failed")
        finally:
            self._open -= 1
            connection.release()
            writer.close()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _stop(self) -> None:
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()


__all__ = ["HttpServer"]
