"""The physical floor of moving a request and its answer over a loopback socket: a server
on a plain socket, one connection at a time, that reads a request's head, receives its body
straight into a preallocated buffer (`recv_into`, one copy from the kernel) and sends a
prepared answer of the size the request names (`x-answer-bytes`). No HTTP library, no
event loop, no framework: what the service's transport could at best cost.

    python -m benchmarks.raw_transport PORT
"""

from __future__ import annotations

import socket
import sys

HEAD_END = b"\r\n\r\n"


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    buffer = bytearray(1 << 20)
    answers: dict[int, bytes] = {}
    while True:
        connection, _ = listener.accept()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with connection:
            pending = b""
            while True:
                while HEAD_END not in pending:
                    data = connection.recv(65536)
                    if not data:
                        break
                    pending += data
                if HEAD_END not in pending:
                    break
                head, _, pending = pending.partition(HEAD_END)
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                fields = {name.strip().lower(): value.strip() for name, value in fields.items()}
                length = int(fields.get(b"content-length", b"0"))
                if len(buffer) < length:
                    buffer = bytearray(length)
                view = memoryview(buffer)
                got = min(len(pending), length)
                view[:got] = pending[:got]
                pending = pending[got:]
                while got < length:
                    got += connection.recv_into(view[got:length])
                size = int(fields.get(b"x-answer-bytes", b"2"))
                if size not in answers:
                    answers[size] = b"\0" * size
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                connection.sendall(answers[size])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
