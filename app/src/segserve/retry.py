"""When and how long segserve-client waits before it sends an image again.

Only answers that mean "not now" rather than "not this" are retried: the rate limit (429),
a fleet with no ready host or full in-flight slots (502, 503) and a gateway timeout (504).
The server's Retry-After is honoured, as delay-seconds or an HTTP date; without one the wait
doubles from BACKOFF_BASE_S. Each wait is stretched by a random part of itself (jitter), so
clients refused together do not all come back together.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import re
import time
from dataclasses import dataclass

# Statuses that mean "not now" rather than "not this": the same request may succeed later.
RETRYABLE = frozenset({429, 502, 503, 504})
# The backoff when the server names no wait: 0.5 s, 1 s, 2 s, ... up to --max-wait.
BACKOFF_BASE_S = 0.5
# Each wait is stretched by up to this share of itself, at random.
JITTER = 0.5


@dataclass
class RetryPolicy:
    """At most `retries` retries of one request, none after a wait over `max_wait` seconds."""

    retries: int = 4
    max_wait: float = 30.0

    def wait(self, attempt: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before retry number `attempt` (1, 2, ...), or None to give up."""
        if attempt > self.retries:
            return None
        if retry_after is None:
            base = BACKOFF_BASE_S * 2 ** (attempt - 1)
        elif retry_after > self.max_wait:
            return None  # not a wait this client accepts
        else:
            base = retry_after
        # Never sooner than the server asked: max_wait >= retry_after here.
        return min(base * (1 + JITTER * rng.random()), self.max_wait)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delay-seconds or an HTTP date (RFC 9110 10.2.3);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,9}", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        # asctime dates carry no zone; HTTP dates are always GMT (RFC 9110 5.6.7).
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
