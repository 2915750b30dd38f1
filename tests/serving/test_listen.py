"""The app's listening socket hands every connection it accepts a small send buffer and the send timeout as
the kernel's user timeout (app/listen.py); the SSE abuse test in tests/reliability shows what they are for."""

from __future__ import annotations

import socket

import uvicorn

from freshviews.serving import ServingSettings
from freshviews.serving.listen import listening_socket
from tests.support.helpers import free_port


def _accepted(settings: ServingSettings) -> tuple[socket.socket, socket.socket, socket.socket]:
    config = uvicorn.Config(lambda: None, host="127.0.0.1", port=free_port())
    listener = listening_socket(config, settings)
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    return listener, client, server_side


def test_accepted_connections_get_the_send_buffer_and_the_user_timeout() -> None:
    listener, client, conn = _accepted(ServingSettings(socket_send_buffer=50_000, sse_send_timeout=3.5))
    with listener, client, conn:
        assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 50_000  # Linux doubles what it is given
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3500


def test_a_send_buffer_of_zero_leaves_the_kernel_its_own() -> None:
    listener, client, conn = _accepted(ServingSettings(socket_send_buffer=0))
    plain = socket.create_server(("127.0.0.1", 0))
    with listener, client, conn, plain, socket.create_connection(plain.getsockname()):
        plain_conn, _ = plain.accept()
        with plain_conn:
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == plain_conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF
            )
