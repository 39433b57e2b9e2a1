"""Whether a host can be reached: the fail-fast test before any download."""
from __future__ import annotations

import socket


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
