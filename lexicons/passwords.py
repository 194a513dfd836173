"""Password hashing for computed fields: scrypt with a random salt per value.

The stored form carries its parameters, so they can be raised later without
breaking the hashes already stored::

    scrypt$16384$8$1$<salt hex>$<hash hex>

:func:`encrypt` is the deterministic hash of the original lexicons API (also
``lexicons.utils.encrypt``): no salt per value, so a row can be looked up by it.
"""
from __future__ import annotations

import hashlib
import hmac
import os

N, R, P = 1 << 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_N = 1 << 20


def hash_password(password: str) -> str:
    """Return a salted scrypt hash of *password*, parameters included."""
    if not isinstance(password, str):
        raise TypeError(f"a password is a str, not {type(password).__name__}")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Tell whether *password* matches a hash made by :func:`hash_password`.

    A malformed stored value never matches (and never raises).
    """
    if not isinstance(password, str) or not isinstance(stored, str):
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return False
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16
            and salt and 16 <= len(expected) <= 64):
        return False
    try:
        digest = _scrypt(password, salt, n, r, p, len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r,
                          p=p, maxmem=256 * n * r * p, dklen=size)


#: The fixed salt and cost of :func:`encrypt`: the same password always gives the same hash.
ENCRYPT_SALT = b"lexicons.utils.encrypt"
ENCRYPT_ROUNDS = 100_000


def encrypt(value: str) -> str:
    """Return a deterministic hash of *value*: PBKDF2-HMAC-SHA256 with a fixed salt, in hex.

    The same value always gives the same hash, so a row can be found by it
    (``db.get(User, email=e, password=encrypt(raw))``), as applications written
    for the original lexicons do. The price: equal passwords have equal hashes.
    New code should prefer :func:`hash_password` (salted per value) with
    :func:`verify_password`.
    """
    if not isinstance(value, str):
        raise TypeError(f"encrypt takes a str, not {type(value).__name__}")
    digest = hashlib.pbkdf2_hmac("sha256", value.encode("utf-8", "surrogatepass"),
                                 ENCRYPT_SALT, ENCRYPT_ROUNDS)
    return digest.hex()
