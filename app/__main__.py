"""`python -m app`: the service under uvicorn, with uvloop and httptools, as the
settings say (POOL_HOST, POOL_PORT, POOL_WORKERS, POOL_DRAIN_S, POOL_SHUTDOWN_GRACE_S),
its connections held within limits (`app.connections`), and the gRPC server on
POOL_GRPC_PORT (started by the app's lifespan).

On SIGTERM (an orchestrator stopping a replica) a single worker drains first: /readyz
(and the protocol's readiness over REST and gRPC) turns unready within a tick while
requests are still served for `drain_s`, so a load balancer notices and stops sending;
then both servers stop accepting and let in-flight requests finish for up to
`shutdown_grace_s`, and it exits. With several workers (uvicorn's supervisor runs them)
there is no drain, and each worker's gRPC server stops after its HTTP requests have
finished, so a stop may take twice the grace: scale replicas rather than workers.
"""

from __future__ import annotations

import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from app.connections import http_protocol
from app.lifecycle import Lifecycle
from app.settings import Settings
from app.telemetry import configure_logging


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self._drain_s = drain_s
        self._lifecycle = lifecycle
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: the drain itself starts on the event loop, at the next tick.
        if sig == signal.SIGTERM and self._exit_at is None and self._drain_s > 0:
            self._exit_at = time.monotonic() + self._drain_s
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._lifecycle.close()  # the gRPC server stops taking calls now too, not after HTTP's
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None:
            self._lifecycle.drain()  # once: later calls do nothing
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self._exit_at = float("inf")
            super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


def main() -> None:
    settings = Settings()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "loop": "uvloop",
        "http": http_protocol(),  # httptools, within the connection limits of the settings
        "ws": "none",
        "server_header": False,
        "access_log": False,  # the service logs each request itself, as JSON lines
        "log_level": settings.log_level,
        "log_config": None,  # its lines go through the service's JSON handler (app.telemetry)
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    configure_logging(settings.log_level)
    if settings.workers > 1:
        # uvicorn's supervisor runs the workers; each still lets in-flight requests finish.
        uvicorn.run("app.main:app", **options)
        return
    from app.main import create_app

    app = create_app(settings)
    DrainingServer(uvicorn.Config(app, **options), settings.drain_s, app.state.runtime.lifecycle).run()


if __name__ == "__main__":
    main()
