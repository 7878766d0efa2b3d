"""A TCP proxy that holds every HTTP request back for a fixed delay: a loopback object store (moto)
answering as slowly as a cloud one (10-50 ms a request) does.

    python bench/latency_proxy.py --upstream 127.0.0.1:18001 --delay-ms 20 [--port 18101]

Requests are parsed just enough to find where each one ends (Content-Length or chunked body), so
every request on a kept-alive connection is delayed, not only a connection's first. Each request
head waits `delay` before it goes upstream; bodies and responses are streamed as they come, so the
proxy adds latency, not a bandwidth limit or buffering. bench/run.py starts one in a thread
(`LatencyProxy`); run standalone it serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading

COPY_CHUNK = 1 << 16


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, COPY_CHUNK))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        writer.write(data)
        await writer.drain()
        n -= len(data)


def _body_framing(head: bytes) -> tuple[bool, int]:
    """(chunked, content length) of a request head."""
    chunked, length = False, 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length":
            length = int(value.strip())
    return chunked, length


async def _requests(client: asyncio.StreamReader, upstream: asyncio.StreamWriter, delay: float,
                    counter: list[int]) -> None:
    """Forward requests one by one, each head `delay` late, until the client closes."""
    while True:
        try:
            head = await client.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        counter[0] += 1
        await asyncio.sleep(delay)
        upstream.write(head)
        chunked, length = _body_framing(head)
        if chunked:
            while True:
                line = await client.readuntil(b"\r\n")
                upstream.write(line)
                size = int(line.split(b";")[0], 16)
                if size == 0:  # trailers, up to the empty line
                    while (trailer := await client.readuntil(b"\r\n")) != b"\r\n":
                        upstream.write(trailer)
                    upstream.write(b"\r\n")
                    break
                await _copy(client, upstream, size + 2)
        else:
            await _copy(client, upstream, length)
        await upstream.drain()


async def _responses(upstream: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
    while data := await upstream.read(COPY_CHUNK):
        client.write(data)
        await client.drain()


async def serve(port: int, upstream_host: str, upstream_port: int, delay: float,
                counter: list[int] | None = None) -> asyncio.Server:
    """Listen on 127.0.0.1:`port` (0: any free port); `counter[0]` counts the requests forwarded."""
    count = counter if counter is not None else [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            writer.close()
            return
        tasks = [asyncio.ensure_future(_requests(reader, up_writer, delay, count)),
                 asyncio.ensure_future(_responses(up_reader, writer))]
        try:
            # Either side closing ends the connection (a client's close after its last response,
            # or the store closing a connection it will not keep alive).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for w in (writer, up_writer):
                w.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


class LatencyProxy:
    """The proxy on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, upstream_port: int, delay: float, upstream_host: str = "127.0.0.1") -> None:
        self.requests = [0]
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._server = asyncio.run_coroutine_threadsafe(
            serve(0, upstream_host, upstream_port, delay, self.requests), self._loop
        ).result()
        self.port: int = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening and the loop (open connections die with the daemon thread)."""
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", default="127.0.0.1:18001", help="HOST:PORT of the store")
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    host, _, port = args.upstream.rpartition(":")

    async def run() -> None:
        server = await serve(args.port, host, int(port), args.delay_ms / 1000)
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
