"""A client for the pooling service: every pooling operation over HTTP, numpy in and out.

    from pooling_client import PoolClient
    with PoolClient("http://127.0.0.1:8000", api_key="...") as client:
        output, indices = client.max2d(array, kernel_size=2, return_indices=True)

One typed method per operation, with the service's parameter names; `AsyncPoolClient` is the
same for asyncio. The `pool` command line comes with the `cli` extra.
"""

from pooling_client._catalogue import OPERATIONS
from pooling_client.client import AsyncPoolClient, PoolClient, PoolError

__all__ = ["OPERATIONS", "AsyncPoolClient", "PoolClient", "PoolError"]
__version__ = "0.1.0"
