"""Rate limits per caller: a token bucket per (caller, class of route).

Classes (``require_scope(..., limit=...)`` names one per route):
- ``submit``: ``POST /v1/forget``, cancel: ``LETHE_RATE_SUBMIT_PER_MIN`` per caller;
- ``expensive``: predict, subject lookups, audit verify/export, uploads:
  ``LETHE_RATE_EXPENSIVE_PER_MIN`` per caller.

A bucket holds up to one minute's allowance and refills continuously; an empty bucket answers
429 ``rate_limited`` with ``Retry-After`` (whole seconds until one token is back). The caller
is the tenant when the key belongs to one, else the key: a portal's keys share its limit.
0 = unlimited. The buckets live in the gateway process: with N gateways behind a balancer a
caller gets at most N times the limit (put the same limit in the balancer when that matters).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

SUBMIT, EXPENSIVE = "submit", "expensive"


class RateLimiter:
    def __init__(self, per_minute: dict[str, float], clock: Callable[[], float] = time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)

    def take(self, caller: str, kind: str) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until one is back."""
        rate = self.per_minute.get(kind) or 0
        if rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get((caller, kind), (rate, now))
            tokens = min(rate, tokens + (now - at) * rate / 60.0)
            if tokens >= 1:
                self._buckets[(caller, kind)] = (tokens - 1, now)
                return 0.0
            self._buckets[(caller, kind)] = (tokens, now)
            return (1 - tokens) * 60.0 / rate


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
