"""Where this process is in its life, shared by the server loop, the routes and the gRPC server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Event = Literal["draining", "closing"]


class Lifecycle:
    """`draining`: set on SIGTERM by `python -m app`, read by /readyz and the protocol's
    readiness, while requests are still served. `closing`: the drain is over and the
    servers stop taking requests. Watchers (the gRPC server, `app.main`) hear each once, on
    the event loop, as it happens."""

    def __init__(self) -> None:
        self.draining = False
        self.closing = False
        self._watchers: list[Callable[[Event], None]] = []

    def watch(self, watcher: Callable[[Event], None]) -> None:
        self._watchers.append(watcher)

    def drain(self) -> None:
        if not self.draining:
            self.draining = True
            self._tell("draining")

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._tell("closing")

    def _tell(self, event: Event) -> None:
        for watcher in self._watchers:
            watcher(event)
