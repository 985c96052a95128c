"""Failed sign-ins, counted per account and per client address, to refuse guessing before it costs a hash.

A key (an account name, a client address) with `limit` failures within the last `window_s` seconds is
refused until the oldest of them is `window_s` old. Attempts refused this way do not count, so a flood
is held to `limit` guesses per window. At most `max_keys` keys are kept, the least recently failed
forgotten first: memory stays bounded however many names or addresses a flood uses. Kept in memory, per
server process: a restart forgets every count.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class SignInThrottle:
    """Moving-window counts of failed sign-ins per key; thread-safe (sync endpoints run in a pool)."""

    def __init__(self, window_s: float, max_keys: int, clock=time.monotonic):
        self.window_s, self.max_keys, self.clock = window_s, max_keys, clock
        self.failures: OrderedDict[str, deque] = OrderedDict()  # key -> times of its last `limit` failures
        self.lock = threading.Lock()

    def retry_after(self, limits: dict[str, int]) -> float:
        """Seconds until every key of {key: limit} may try again; 0 when all may now."""
        now, wait = self.clock(), 0.0
        with self.lock:
            for key, limit in limits.items():
                times = self.failures.get(key)
                if times is not None and len(times) >= limit:
                    wait = max(wait, times[-limit] + self.window_s - now)
        return max(wait, 0.0)

    def failed(self, limits: dict[str, int]) -> None:
        """Count a failed sign-in against each key of {key: limit}."""
        now = self.clock()
        with self.lock:
            for key, limit in limits.items():
                times = self.failures.pop(key, None)
                if times is None or times.maxlen != limit:
                    times = deque(times or (), maxlen=limit)
                times.append(now)
                self.failures[key] = times  # now the most recent
            while len(self.failures) > self.max_keys:
                self.failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Forget the failures of `key` (an account that just signed in)."""
        with self.lock:
            self.failures.pop(key, None)

    def __len__(self) -> int:
        return len(self.failures)
