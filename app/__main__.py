"""`python -m app`: the service under uvicorn, with uvloop and httptools, as the
settings say (POOL_HOST, POOL_PORT, POOL_WORKERS)."""

from __future__ import annotations

import uvicorn

from app.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        server_header=False,
        date_header=True,
        access_log=False,  # the service logs each request itself, as JSON lines
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
