"""Raw HTTP/1.1 over a socket, for tests that must reach the server's parser with any bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Generous: a functional bound for a loopback answer, not a measurement.
TIMEOUT = 10.0


@dataclass(frozen=True)
class Answer:
    """One HTTP response as it came over the wire."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def error(self) -> Any:
        """The OpenAI error object of a JSON error answer."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)["error"]


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def request(
    method: str, path: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    """A request's bytes: request line, Host, the headers as given (nothing added), body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = (line.split(":", 1) for line in lines[1:] if line)
    return int(lines[0].split()[1]), {name.strip().lower(): value.strip() for name, value in fields}


async def read_answer(reader: asyncio.StreamReader) -> Answer | None:
    """The next answer on a connection; None when the server closed it without one."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    status, headers = parse_head(head)
    body = await asyncio.wait_for(
        reader.readexactly(int(headers.get("content-length", 0))), TIMEOUT
    )
    return Answer(status, headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (it sends nothing more, then closes)."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    except ConnectionResetError:
        return True


async def exchange(url: str, data: bytes) -> Answer | None:
    """Send `data` on a new connection; the answer."""
    return (await _exchange(url, data, then_closed=False))[0]


async def exchange_then_closed(url: str, data: bytes) -> tuple[Answer | None, bool]:
    """Send `data` on a new connection: the answer, and whether the server then closed it."""
    return await _exchange(url, data, then_closed=True)


async def _exchange(url: str, data: bytes, then_closed: bool) -> tuple[Answer | None, bool]:
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):  # the server may refuse before reading all
            await writer.drain()
        answer = await read_answer(reader)
        return answer, then_closed and await closed_by_server(reader)
    finally:
        writer.close()


def exchange_until_closed(url: str, data: bytes) -> bytes:
    """Blocking: send `data` on a new connection; all the server sent until it closed it."""
    with socket.create_connection(address(url), timeout=TIMEOUT) as connection:
        with contextlib.suppress(ConnectionError):  # the server may refuse before reading all
            connection.sendall(data)
        received = bytearray()
        while chunk := _recv(connection):
            received += chunk
    return bytes(received)


def parse_answers(received: bytes) -> list[Answer]:
    """The final (non-1xx) answers in what a server sent; a last one cut short is left out."""
    answers = []
    while received:
        head, separator, rest = received.partition(b"\r\n\r\n")
        if not separator:
            break
        status, headers = parse_head(head)
        length = int(headers.get("content-length", len(rest)))
        if status >= 200:
            answers.append(Answer(status, headers, rest[:length]))
        received = rest[length:]
    return answers


def _recv(connection: socket.socket) -> bytes:
    try:
        return connection.recv(65536)
    except ConnectionResetError:
        return b""
