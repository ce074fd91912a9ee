"""Where this process is in its life, shared by the server loop, the routes and the gRPC server."""

from __future__ import annotations

from collections.abc import Callable


class Lifecycle:
    """`draining`: set on SIGTERM by `python -m app`, read by /readyz and the protocol's
    readiness, while requests are still served. `close()`: the drain is over and the
    listeners stop taking requests. Watchers (the gRPC server) hear both as they happen."""

    def __init__(self) -> None:
        self.draining = False
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, watcher: Callable[[str], None]) -> None:
        """`watcher("draining")` when the drain starts, `watcher("closing")` when it ends."""
        self._watchers.append(watcher)

    def drain(self) -> None:
        if not self.draining:
            self.draining = True
            self._tell("draining")

    def close(self) -> None:
        self._tell("closing")

    def _tell(self, event: str) -> None:
        for watcher in self._watchers:
            watcher(event)
