"""Per-key limits: requests per minute (a token bucket) and tokens per UTC day (a quota), answered 429.

Both are the key's own settings (`tunelab keys create --rpm N --tokens-per-day N`) carried by the
principal the authenticator returns. A full engine queue is a different thing (the server is busy, not
the key): that is 503 with Retry-After, from the handlers.

The bucket lives in this process: with several replicas each allows `rpm`, so a key gets at most
replicas x rpm. The quota is read from the shared database, so it holds across replicas; it is checked
when a request arrives (requests already running may finish past it).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from starlette.types import ASGIApp, Receive, Scope, Send

from tunelab.serving.auth import Principal
from tunelab.serving.errors import APIError, error_response

__all__ = ["RateLimitMiddleware", "RateLimiter", "TokenBucket", "seconds_to_utc_midnight"]


@dataclass
class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second (capacity = rpm, rate = rpm / 60)."""

    capacity: float
    rate: float
    tokens: float
    updated: float

    @classmethod
    def per_minute(cls, rpm: int, now: float) -> TokenBucket:
        return cls(float(rpm), rpm / 60.0, float(rpm), now)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    now = now or datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


class RateLimiter:
    """Decides whether a principal may make a request now; keeps one bucket per key with an rpm."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, principal: Principal) -> APIError | None:
        """None when allowed; else the 429 to answer (quota first, so a refused request costs no rpm)."""
        attrs = principal.attributes
        quota, used = attrs.get("tokens_per_day"), attrs.get("tokens_today", 0)
        if quota is not None and used >= quota:
            wait = seconds_to_utc_midnight()
            return APIError(429, f"API key '{principal.key_id}' has used {used} of its {quota} tokens today; the "
                            f"quota resets at 00:00 UTC (in {wait} s)", code="quota_exceeded",
                            headers={"Retry-After": str(wait)})
        rpm = attrs.get("rpm")
        if rpm is None:
            return None
        with self._lock:
            bucket = self._buckets.get(principal.key_id)
            if bucket is None or bucket.capacity != rpm:  # new key, or its limit was changed
                bucket = self._buckets[principal.key_id] = TokenBucket.per_minute(rpm, self.clock())
            wait = bucket.take(self.clock())
        if wait == 0.0:
            return None
        return APIError(429, f"API key '{principal.key_id}' is limited to {rpm} requests per minute; retry in "
                        f"{math.ceil(wait)} s", code="rate_limit_exceeded",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})


class RateLimitMiddleware:
    """ASGI middleware after authentication: 429 with Retry-After when the key is over a limit."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter):
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal") if scope["type"] == "http" else None
        err = self.limiter.check(principal) if principal is not None else None
        if err is not None:
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)
