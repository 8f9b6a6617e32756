"""A TCP proxy that a test can cut, for fault tests against a real server (PostgreSQL).

::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url_for("robot_sac_ab12")   # postgresql://postgres@127.0.0.1:<port>/...
        ...
        proxy.cut()      # every open connection is reset; new ones are reset at once
        ...
        proxy.restore()  # new connections go through again

One background thread runs every connection with non-blocking sockets and a selector, so
:meth:`cut` takes effect before it returns and :meth:`close` leaves no thread or socket behind.
While cut, the proxy still listens on its port (so the port stays the proxy's) but answers
every connection with a reset: a client's connect fails at once, as with a server that is down.
:meth:`stall` is the other fault: the network goes silent (nothing is forwarded or closed, new
connections hang), as when a link or a host vanishes without a reset.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

CHUNK = 64 * 1024
# Bytes waiting for a slow receiver before the proxy stops reading from its sender.
BUFFER_LIMIT = 1024 * 1024


def _abort(sock: socket.socket) -> None:
    """Close with a reset (RST), not an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.connected = False  # the upstream connect has completed
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False  # the client sent FIN
        self.upstream_eof = False
        self.client_shut = False  # we passed the FIN on (shutdown(SHUT_WR))
        self.upstream_shut = False

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class TcpProxy:
    """Forwards connections from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.setblocking(False)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pairs: set[_Pair] = set()
        self._stalled_clients: set[socket.socket] = set()  # accepted while stalled
        self._owner: dict[socket.socket, _Pair] = {}
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._mode = "open"  # "open", "cut" or "stall"
        self._stop = False
        self._closed = False
        self.accepted = 0  # connections accepted in all (cut ones included)
        self._thread = threading.Thread(target=self._run, name=f"TcpProxy-{self.port}", daemon=True)
        self._thread.start()

    # the test's side ----------------------------------------------------------------------

    def url_for(self, dbname: str, user: str = "postgres") -> str:
        """A PostgreSQL URL to ``dbname`` through this proxy."""
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    @property
    def active(self) -> int:
        """Connections open through the proxy now."""
        return self._call(lambda: len(self._pairs) + len(self._stalled_clients))

    def cut(self) -> None:
        """Reset every open connection, both ways, and reset new ones until :meth:`restore`."""
        self._call(lambda: self._set_mode("cut"))

    def stall(self) -> None:
        """Forward nothing and close nothing until :meth:`restore` (a silent network)."""
        self._call(lambda: self._set_mode("stall"))

    def restore(self) -> None:
        """Forward connections again (ones a stall held go on where they were)."""
        self._call(lambda: self._set_mode("open"))

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop = True
        self._wake()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError("the proxy thread did not stop")

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], object], timeout: float = 10.0):  # type: ignore[no-untyped-def]
        """Run ``fn`` on the proxy's thread and wait for it: a fault is in place on return."""
        done = threading.Event()
        result: list[object] = []
        failure: list[BaseException] = []

        def call() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                failure.append(exc)

        with self._lock:
            if self._closed or not self._thread.is_alive():
                raise RuntimeError("the proxy is closed")
            self._calls.append((call, done))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError("the proxy thread did not answer")
        if failure:
            raise failure[0]
        if not result:
            raise RuntimeError("the proxy closed meanwhile")
        return result[0]

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # the proxy's thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    calls, self._calls = self._calls, []
                    stop = self._stop
                for fn, done in calls:
                    try:
                        fn()
                    finally:
                        done.set()
                if stop:
                    return
                for key, events in self._selector.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    elif sock is self._listener:
                        self._accept()
                    elif sock in self._owner:
                        self._service(self._owner[sock], sock, events)  # type: ignore[arg-type]
        finally:
            self._teardown()

    def _teardown(self) -> None:
        for pair in list(self._pairs):
            self._drop(pair, reset=True)
        for client in list(self._stalled_clients):
            _abort(client)
        self._stalled_clients.clear()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._lock:  # a call that raced close() must not wait for its timeout
            calls, self._calls = self._calls, []
        for _, done in calls:
            done.set()

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "cut":
            for pair in list(self._pairs):
                self._drop(pair, reset=True)
            for client in list(self._stalled_clients):
                _abort(client)
            self._stalled_clients.clear()
        elif mode == "open":
            for client in list(self._stalled_clients):
                self._stalled_clients.discard(client)
                self._open(client)
        for pair in list(self._pairs):
            self._update(pair)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. too many open files: leave it in the backlog
                return
            self.accepted += 1
            client.setblocking(False)
            if self._mode == "cut":
                _abort(client)
            elif self._mode == "stall":
                self._stalled_clients.add(client)
            else:
                self._open(client)

    def _open(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        self._pairs.add(pair)
        self._owner[client] = pair
        self._owner[upstream] = pair
        err = upstream.connect_ex(self.target)
        if err == 0:
            pair.connected = True
        elif err not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._drop(pair, reset=True)  # the target refused: the client sees a reset
            return
        self._update(pair)

    def _update(self, pair: _Pair) -> None:
        """(Re)register both sockets for what each can do now."""
        stalled = self._mode == "stall"
        want_client = 0
        want_up = 0
        if not stalled:
            if not pair.client_eof and len(pair.to_upstream) < BUFFER_LIMIT:
                want_client |= selectors.EVENT_READ
            if pair.to_client:
                want_client |= selectors.EVENT_WRITE
            if not pair.connected:
                want_up |= selectors.EVENT_WRITE
            else:
                if not pair.upstream_eof and len(pair.to_client) < BUFFER_LIMIT:
                    want_up |= selectors.EVENT_READ
                if pair.to_upstream:
                    want_up |= selectors.EVENT_WRITE
        for sock, want in ((pair.client, want_client), (pair.upstream, want_up)):
            try:
                current = self._selector.get_key(sock).events
            except KeyError:
                current = 0
            if want == current:
                continue
            if current == 0:
                self._selector.register(sock, want)
            elif want == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, want)

    def _service(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        try:
            if sock is pair.upstream and not pair.connected:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err != 0:
                    raise ConnectionRefusedError(err, "connect to the target failed")
                pair.connected = True
            elif sock is pair.client:
                if events & selectors.EVENT_READ:
                    data = sock.recv(CHUNK)
                    if data:
                        pair.to_upstream += data
                    else:
                        pair.client_eof = True
                if events & selectors.EVENT_WRITE and pair.to_client:
                    del pair.to_client[: sock.send(pair.to_client)]
            else:
                if events & selectors.EVENT_READ:
                    data = sock.recv(CHUNK)
                    if data:
                        pair.to_client += data
                    else:
                        pair.upstream_eof = True
                if events & selectors.EVENT_WRITE and pair.to_upstream:
                    del pair.to_upstream[: sock.send(pair.to_upstream)]
            # pass an orderly close on once what preceded it is delivered
            if (
                pair.connected
                and pair.client_eof
                and not pair.to_upstream
                and not pair.upstream_shut
            ):
                pair.upstream.shutdown(socket.SHUT_WR)
                pair.upstream_shut = True
            if pair.upstream_eof and not pair.to_client and not pair.client_shut:
                pair.client.shutdown(socket.SHUT_WR)
                pair.client_shut = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(pair, reset=True)  # one side reset or failed: reset the other too
            return
        if pair.client_shut and pair.upstream_shut:
            self._drop(pair, reset=False)
        else:
            self._update(pair)

    def _drop(self, pair: _Pair, reset: bool) -> None:
        if pair not in self._pairs:
            return
        self._pairs.discard(pair)
        for sock in pair.sockets():
            self._owner.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _abort(sock)
            else:
                sock.close()
