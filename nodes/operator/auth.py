"""The operator login: a scrypt-hashed password in a file, sessions in memory, and a limit on
login attempts.

- The password file holds one line ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64url), written
  by ``mlanet operator password``; it is read again at each login, so changing it needs no
  restart. A file in any other form logs nobody in.
- A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie, valid for
  ``session_minutes``; logging out or restarting the node ends it.
- Failed logins are limited per client address and in total (a sliding minute), so guessing
  costs at least a minute per ``login_attempts_per_minute`` tries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from pathlib import Path

__all__ = ["LoginLimiter", "Sessions", "hash_password", "verify_password"]

_N, _R, _P = 2**14, 8, 1
_MAX_PASSWORD = 1024


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The line to store in the operator password file."""
    if not password:
        raise ValueError("an empty password")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the stored line (constant-time compare)."""
    parts = stored.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or len(password) > _MAX_PASSWORD:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (2**10 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16 and len(expected) >= 16):
        return False
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(expected),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(digest, expected)


def read_password_line(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


class Sessions:
    """Session tokens in memory, each with its expiry; at most ``limit`` at once."""

    def __init__(self, lifetime_seconds: float, limit: int = 64) -> None:
        self._lifetime = lifetime_seconds
        self._limit = limit
        self._tokens: dict[str, float] = {}

    def open(self) -> str:
        now = time.monotonic()
        self._tokens = {t: end for t, end in self._tokens.items() if end > now}
        while len(self._tokens) >= self._limit:
            self._tokens.pop(min(self._tokens, key=self._tokens.__getitem__))
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + self._lifetime
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        for known, end in list(self._tokens.items()):
            if hmac.compare_digest(known, token):
                if end > time.monotonic():
                    return True
                del self._tokens[known]
        return False

    def close(self, token: str | None) -> None:
        if token:
            self._tokens.pop(token, None)


class LoginLimiter:
    """Failed login attempts per client and in total over the last minute."""

    def __init__(self, per_minute: int, *, window: float = 60.0) -> None:
        self._per_minute = per_minute
        self._total_limit = per_minute * 10
        self._window = window
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self._window:
            times.popleft()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may try now."""
        now = time.monotonic()
        self._trim(self._all, now)
        mine = self._failures.get(client, deque())
        self._trim(mine, now)
        if not mine and client in self._failures:
            del self._failures[client]
        waits = []
        if len(mine) >= self._per_minute:
            waits.append(mine[0] + self._window - now)
        if len(self._all) >= self._total_limit:
            waits.append(self._all[0] + self._window - now)
        return max(waits, default=0.0)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        self._failures.setdefault(client, deque()).append(now)
        self._all.append(now)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
