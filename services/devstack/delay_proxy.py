"""A TCP forwarder that holds every byte for a set time each way: network latency
without netem (which this project cannot count on: many kernels, CI's among them, lack it).

Put in front of a server (Redis, on the test bed's Redis host), it makes every client
see `delay_ms` more each way, so a round trip costs 2 x `delay_ms` more, while keeping
what a real network keeps: the order of the bytes, and pipelining. Each chunk is
timestamped when it arrives and passed on once it is `delay_ms` old, without waiting
for the chunks before it to be answered, so 1000 pipelined commands cost one added
round trip, not 1000.

What it does not model: connection setup (the client's connect completes at once; the
first bytes are delayed), loss, bandwidth. Timers run on the event loop, whose waits
are rounded up to the millisecond by epoll: a delay is never shorter than asked, and
may be up to about 1 ms longer.

    python -m services.devstack.delay_proxy --listen 10.77.0.1:6380 \\
        --to 127.0.0.1:6379 --delay-ms 1

An end of file from either side, once the bytes before it are delivered, closes both
connections of the pair. SIGTERM or SIGINT close everything and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections import deque

# Bytes held one way before the proxy stops reading from their sender: TCP's flow
# control then slows the sender, as a full receive window would.
MAX_HELD_BYTES = 4 * 1024 * 1024

Address = tuple[str, int]


class _Direction:
    """Bytes one way through a pair, each chunk released `delay` after it arrived."""

    def __init__(self, pair: _Pair):
        self.pair = pair
        self.loop = pair.loop
        self.held: deque[tuple[float, bytes | None]] = deque()  # (due, chunk or EOF)
        self.held_bytes = 0
        self.source: asyncio.Transport | None = None
        self.destination: asyncio.Transport | None = None
        self.destination_full = False
        self.source_paused = False
        self.timer: asyncio.TimerHandle | None = None

    def push(self, chunk: bytes | None) -> None:
        """`chunk` arrived now (None: the end of the stream)."""
        self.held.append((self.loop.time() + self.pair.proxy.delay_ms / 1000, chunk))
        self.held_bytes += len(chunk or b"")
        self.throttle()
        self.schedule()

    def schedule(self) -> None:
        # One timer per direction, for the oldest chunk: chunks leave in arrival order.
        if self.timer is None and self.held and self.destination is not None:
            self.timer = self.loop.call_at(self.held[0][0], self._release)

    def _release(self) -> None:
        self.timer = None
        if self.destination is None or self.pair.closed:
            return
        now = self.loop.time()
        due: list[bytes] = []
        while self.held and self.held[0][0] <= now:
            chunk = self.held.popleft()[1]
            if chunk is None:  # the end of the stream: what came before it goes first
                self.destination.write(b"".join(due))
                self.pair.close()
                return
            due.append(chunk)
            self.held_bytes -= len(chunk)
        if due:
            self.destination.write(b"".join(due))
        self.throttle()
        self.schedule()

    def throttle(self) -> None:
        """Stop reading from the sender while too much is held or the receiver's buffer
        is full; read again when neither holds."""
        if self.source is None or self.pair.closed:
            return
        hold_back = self.held_bytes > MAX_HELD_BYTES or self.destination_full
        if hold_back and not self.source_paused:
            self.source.pause_reading()
        elif not hold_back and self.source_paused:
            self.source.resume_reading()
        self.source_paused = hold_back

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Side(asyncio.Protocol):
    """One of a pair's two connections: what it receives goes out through `outgoing`;
    `incoming` is the direction that writes to it."""

    def __init__(self, pair: _Pair, outgoing: _Direction, incoming: _Direction):
        self.pair = pair
        self.outgoing = outgoing
        self.incoming = incoming

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def eof_received(self) -> bool:
        self.outgoing.push(None)
        return True  # keep the transport: the pair closes once the EOF is delivered

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.close()

    def pause_writing(self) -> None:
        self.incoming.destination_full = True
        self.incoming.throttle()

    def resume_writing(self) -> None:
        self.incoming.destination_full = False
        self.incoming.throttle()


class _Client(_Side):
    """The accepted side: makes the pair and connects it to the target."""

    def __init__(self, proxy: DelayProxy):
        pair = _Pair(proxy)
        super().__init__(pair, pair.upstream, pair.downstream)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pair.client = transport
        self.pair.upstream.source = transport
        self.pair.downstream.destination = transport
        self.pair.proxy.pairs.add(self.pair)
        task = self.pair.loop.create_task(self.pair.connect())
        self.pair.proxy.tasks.add(task)
        task.add_done_callback(self.pair.proxy.tasks.discard)


class _Pair:
    """A client's connection and the proxy's connection to the target for it."""

    def __init__(self, proxy: DelayProxy):
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.upstream = _Direction(self)  # client -> target
        self.downstream = _Direction(self)  # target -> client
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.closed = False

    async def connect(self) -> None:
        host, port = self.proxy.target
        try:
            transport, _ = await self.loop.create_connection(
                lambda: _Side(self, self.downstream, self.upstream), host, port
            )
        except OSError:
            self.close()  # the client sees its connection closed, as with a refusal
            return
        assert isinstance(transport, asyncio.Transport)
        if self.closed:  # the client left while we connected
            transport.close()
            return
        self.server = transport
        self.upstream.destination = transport
        self.downstream.source = transport
        self.upstream.schedule()  # what the client sent meanwhile
        self.downstream.throttle()

    def close(self, abort: bool = False) -> None:
        """Close both connections; `abort` drops what is still unsent."""
        if self.closed:
            return
        self.closed = True
        self.upstream.cancel()
        self.downstream.cancel()
        for transport in (self.client, self.server):
            if transport is None:
                continue
            if abort:
                transport.abort()
            else:
                transport.close()
        self.proxy.pairs.discard(self)


class DelayProxy:
    """Forwards TCP connections made to `listen` to `target`, `delay_ms` later each way.

    In a program with an event loop: `await proxy.open()` ... `await proxy.aclose()`.
    From plain code (tests): `proxy.start()` ... `proxy.stop()`, or `with proxy:`, which
    run it on a thread of its own. `delay_ms` may be changed while it runs: it applies
    to bytes arriving from then on. Port 0 in `listen` picks a free port: see `address`.
    """

    def __init__(self, listen: Address, target: Address, delay_ms: float = 0.0):
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, not {delay_ms}")
        self.listen = listen
        self.target = target
        self.delay_ms = delay_ms
        self.address: Address | None = None
        self.pairs: set[_Pair] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- on a running event loop -----------------------------------------------------

    async def open(self) -> Address:
        """Listen; the address listened on."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Client(self), *self.listen, reuse_address=True
        )
        self.address = self._server.sockets[0].getsockname()[:2]
        return self.address

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for pair in list(self.pairs):
            pair.close(abort=True)
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -- on a thread of its own --------------------------------------------------------

    def start(self, timeout: float = 5.0) -> DelayProxy:
        """Run on a thread of its own; returns once listening (or raises why not)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.open())
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self.aclose())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the delay proxy did not listen on {self.listen}")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread `start` began, closing every connection."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def parse_address(text: str) -> Address:
    """ "HOST:PORT" (or "[IPv6]:PORT") as (host, port)."""
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(proxy: DelayProxy) -> None:
    """Run `proxy` until SIGTERM or SIGINT, then close everything."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    host, port = await proxy.open()
    # One line, once listening: who started it may wait for it (and learn a chosen port).
    print(
        f"delay proxy listening on {host}:{port}, forwarding to "
        f"{proxy.target[0]}:{proxy.target[1]}, +{proxy.delay_ms:g} ms each way",
        flush=True,
    )
    await stopping.wait()
    await proxy.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack.delay_proxy",
        description="Forward TCP connections, each way DELAY_MS later: added latency "
        "without netem (a round trip grows by 2 x DELAY_MS).",
    )
    parser.add_argument("--listen", type=parse_address, required=True, help="HOST:PORT")
    parser.add_argument("--to", type=parse_address, required=True, help="HOST:PORT")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="added each way, in ms (may be 0.5)"
    )
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    asyncio.run(serve(DelayProxy(args.listen, args.to, args.delay_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
