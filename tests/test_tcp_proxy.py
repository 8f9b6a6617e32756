"""The fault-injecting TCP proxy, with a real PostgreSQL connection through it."""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg
import pytest

from tests.pg import database_of
from tests.servers import free_port
from tests.tcp_proxy import TcpProxy

PG = ("127.0.0.1", 5432)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _connect(url: str, timeout: int = 5) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=timeout)


def test_cut_breaks_open_connections_and_refuses_new_ones_until_restore(pg_url: str):
    with TcpProxy(*PG) as proxy:
        url = proxy.url_for(database_of(pg_url))
        assert url == f"postgresql://postgres@127.0.0.1:{proxy.port}/{database_of(pg_url)}"
        conn = _connect(url)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            # more than the proxy buffers, so its flow control is exercised too
            big = conn.execute("SELECT repeat('x', 8 * 1024 * 1024)").fetchone()
            assert big is not None and len(big[0]) == 8 * 1024 * 1024
            assert proxy.active == 1

            proxy.cut()
            assert proxy.active == 0
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            conn.close()

        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            _connect(url)
        assert time.monotonic() - started < 2.0, "a connect while cut must fail fast"

        proxy.restore()
        with _connect(url) as again:
            assert again.execute("SELECT current_database()").fetchone() == (database_of(pg_url),)


def test_cut_also_breaks_a_query_in_flight(pg_url: str):
    with TcpProxy(*PG) as proxy, _connect(proxy.url_for(database_of(pg_url))) as conn:
        errors: list[BaseException] = []

        def sleeper() -> None:
            try:
                conn.execute("SELECT pg_sleep(30)")
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=sleeper)
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        proxy.cut()
        t.join(10)
        assert not t.is_alive()
        assert time.monotonic() - started < 5
        assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)


def test_stall_holds_traffic_until_restore(pg_url: str):
    with TcpProxy(*PG) as proxy:
        url = proxy.url_for(database_of(pg_url))
        with _connect(url) as conn:
            proxy.stall()
            answer: list[object] = []
            t = threading.Thread(target=lambda: answer.append(conn.execute("SELECT 42").fetchone()))
            t.start()
            t.join(0.5)
            assert t.is_alive() and not answer, "a stalled network delivers nothing"
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                _connect(url, timeout=2)  # libpq's connect_timeout is what ends it
            assert time.monotonic() - started >= 1.5
            proxy.restore()
            t.join(10)
            assert answer == [(42,)]
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_target_that_is_down_gives_a_fast_error():
    with TcpProxy("127.0.0.1", free_port()) as proxy:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            _connect(proxy.url_for("test"))
        assert time.monotonic() - started < 2.0
        assert proxy.active == 0


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """Echoes what it receives, then closes its side after the client's FIN."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return server, t


def test_bytes_and_half_closes_go_through_unchanged():
    server, t = _echo_server()
    payload = os.urandom(5 * 1024 * 1024)
    with server, TcpProxy(*server.getsockname()[:2]) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        with client:
            received = bytearray()

            def read() -> None:
                while data := client.recv(65536):
                    received.extend(data)

            reader = threading.Thread(target=read)
            reader.start()
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)  # the echo server sees EOF only through the proxy
            reader.join(20)
            assert not reader.is_alive()
        assert bytes(received) == payload
        t.join(10)
        deadline = time.monotonic() + 5
        while proxy.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.active == 0  # both sides closed: the proxy let go of the pair


def test_close_leaves_no_thread_or_socket_behind(pg_url: str):
    threads, fds = threading.active_count(), _fds()
    proxy = TcpProxy(*PG)
    url = proxy.url_for(database_of(pg_url))
    conns = [_connect(url) for _ in range(3)]
    proxy.stall()
    held = socket.create_connection(("127.0.0.1", proxy.port))  # accepted while stalled
    assert threading.active_count() == threads + 1
    proxy.close()
    proxy.close()  # idempotent
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
    held.close()
    with pytest.raises(RuntimeError):
        proxy.cut()
    assert threading.active_count() == threads
    assert _fds() == fds
    with pytest.raises(ConnectionRefusedError):  # nobody listens on its port any more
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
