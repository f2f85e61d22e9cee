"""The operator login: a scrypt-hashed password in a file, sessions in memory, and a limit on
login attempts.

- The password file holds one line ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64url), written
  by ``mlanet operator password``; it is read again at each login, so changing it needs no
  restart. A file in any other form logs nobody in.
- A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie, valid for
  ``session_minutes``; logging out or restarting the node ends it.
- Login attempts are limited (:class:`LoginLimiter`), and each one is counted when it comes
  in, before its password is hashed: attempts sent in parallel cannot all be tried. A client
  address gets ``login_attempts_per_minute`` attempts, then a backoff that doubles with each
  further failure (from a minute / ``login_attempts_per_minute`` up to a minute), and the
  account (the one operator password, from every address together) the same with ten times
  as many: guessing from many addresses is slowed down too.
- A browser that logged in before carries a signed *device* cookie (:class:`Devices`); its
  attempts are limited on their own, so someone else's failures, on a shared address (a proxy,
  a NAT) or anywhere, never lock it out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Attempt", "Devices", "LoginLimiter", "Sessions", "hash_password", "verify_password"]

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


class Devices:
    """Browsers that logged in before: a random id and its HMAC (under a key of this process)
    in a cookie. A forged or altered cookie is not known; a restart forgets every device."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, device: str) -> str:
        return _b64(hmac.new(self._key, device.encode("ascii"), hashlib.sha256).digest())

    def issue(self) -> str:
        """The cookie value for a browser that just logged in."""
        device = secrets.token_urlsafe(16)
        return f"{device}.{self._mac(device)}"

    def known(self, cookie: str | None) -> str | None:
        """The device id of a cookie this process issued; None for anything else."""
        if not cookie or len(cookie) > 128 or cookie.count(".") != 1:
            return None
        device, mac = cookie.split(".")
        if not device.isascii() or not hmac.compare_digest(mac, self._mac(device)):
            return None
        return device


@dataclass(slots=True)
class _Backoff:
    """The failed attempts of one key: ``free`` of them, then a wait of ``step`` seconds that
    doubles with each further failure, up to ``cap``. Forgotten after ``forget`` quiet seconds
    or a success."""

    free: int
    step: float
    cap: float
    forget: float
    failures: int = 0
    last: float = 0.0  # when the last one failed
    pending: int = 0  # admitted, password not yet checked

    def wait(self, now: float) -> float:
        if not self.pending and self.failures and now - self.last >= self.forget:
            self.failures = 0
        if self.failures + self.pending < self.free:
            return 0.0
        if self.pending:  # beyond the free attempts one at a time: wait for the one in flight
            return self.step
        delay = min(self.cap, self.step * 2.0 ** (self.failures - self.free))
        return max(0.0, self.last + delay - now)

    @property
    def idle(self) -> bool:
        return not self.failures and not self.pending


@dataclass(frozen=True, slots=True)
class Attempt:
    """One login attempt as the limiter saw it: admitted (counted against ``keys``) or told to
    wait ``wait`` seconds (counted nowhere)."""

    keys: tuple[str, ...]
    wait: float = 0.0

    @property
    def admitted(self) -> bool:
        return self.wait <= 0


_ACCOUNT = "account"
_MAX_KEYS = 10_000


class LoginLimiter:
    """Login attempts per client address, per known device and for the account, counted when
    they come in (see the module docstring)."""

    def __init__(
        self,
        per_minute: int,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_minute = per_minute
        self._window = window
        self._clock = clock
        self._keys: dict[str, _Backoff] = {}

    def _backoff(self, key: str) -> _Backoff:
        found = self._keys.get(key)
        if found is None:
            free = self._per_minute * (10 if key == _ACCOUNT else 1)
            found = _Backoff(free, self._window / free, self._window, 2 * self._window)
            if len(self._keys) >= _MAX_KEYS:  # bounded memory under a spray of addresses
                for old in [k for k, v in self._keys.items() if v.idle][: _MAX_KEYS // 10]:
                    del self._keys[old]
                if len(self._keys) >= _MAX_KEYS:
                    del self._keys[next(k for k in self._keys if k != _ACCOUNT)]
            self._keys[key] = found
        return found

    def admit(self, address: str, device: str | None = None) -> Attempt:
        """Count an attempt before its password is checked, or say how long to wait.

        A known ``device`` (:class:`Devices`) is limited on its own; any other attempt by its
        client address and by the account."""
        keys = (f"device:{device}",) if device else (f"address:{address}", _ACCOUNT)
        now = self._clock()
        backoffs = [self._backoff(key) for key in keys]
        wait = max(backoff.wait(now) for backoff in backoffs)
        if wait > 0:
            return Attempt(keys, wait)
        for key, backoff in zip(keys, backoffs, strict=True):
            backoff.pending += 1
            self._keys[key] = backoff  # kept while it is pending
        return Attempt(keys)

    def settle(self, attempt: Attempt, *, ok: bool) -> None:
        """The password of an admitted attempt was checked: right (its keys are forgiven) or
        wrong (a failure of each)."""
        self._finish(attempt, failed=not ok, ok=ok)

    def release(self, attempt: Attempt) -> None:
        """An admitted attempt that tried no password (its form could not be read)."""
        self._finish(attempt, failed=False, ok=False)

    def _finish(self, attempt: Attempt, *, failed: bool, ok: bool) -> None:
        if not attempt.admitted:
            return
        now = self._clock()
        for key in attempt.keys:
            backoff = self._backoff(key)
            backoff.pending = max(0, backoff.pending - 1)
            if ok:
                backoff.failures = 0
            elif failed:
                backoff.failures += 1
                backoff.last = now
            if backoff.idle and key != _ACCOUNT:
                del self._keys[key]
