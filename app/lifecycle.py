"""Where this process is in its life, shared by the server loop and the routes."""

from __future__ import annotations


class Lifecycle:
    """Draining: set on SIGTERM by `python -m app`, read by /readyz and the protocol's
    readiness, while requests are still served."""

    def __init__(self) -> None:
        self.draining = False
