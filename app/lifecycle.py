"""Whether this process is draining: set on SIGTERM by `python -m app`, read by /readyz."""

draining = False
