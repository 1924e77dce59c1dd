"""API key generation and hashing, JWTs, and AES-256-GCM for stored upstream secrets."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_PREFIX = "mcp_"
#: Characters of the key kept in clear for display ("mcp_AbCd…").
DISPLAY_PREFIX_LENGTH = 12
JWT_ALGORITHM = "HS256"
_CIPHER_VERSION = "v1"
_AAD = b"metamcp-secret"


class CryptoError(Exception):
    """A token or ciphertext is invalid."""


@dataclass(frozen=True)
class NewKey:
    plain: str
    hash: bytes
    prefix: str


def generate_api_key() -> NewKey:
    """A new key: `mcp_` + 32 random bytes, URL-safe base64 (43 characters)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(plain=plain, hash=hash_api_key(plain), prefix=plain[:DISPLAY_PREFIX_LENGTH])


def hash_api_key(plain: str) -> bytes:
    # The key has 256 bits of entropy, so a fast unsalted hash cannot be brute-forced and lets
    # the database find the key through a unique index in one lookup.
    return hashlib.sha256(plain.encode("utf-8")).digest()


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class TokenClaims:
    """What a valid JWT says: the key it was issued for and that key's role at the time."""

    key_id: int
    role: str


def issue_jwt(key_id: int, secret: str, lifetime: int, now: float | None = None, *, role: str) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": str(key_id),
        "role": role,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def verify_jwt(token: str, secret: str) -> TokenClaims:
    """Return the key id and role a valid token was issued for; raise CryptoError otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "role", "iat", "exp", "jti"]},
        )
        return TokenClaims(int(claims["sub"]), str(claims["role"]))
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise CryptoError("invalid or expired token") from e


class SecretBox:
    """Encrypts short secrets (tokens, header and env values) with AES-256-GCM."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plain: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain.encode("utf-8"), _AAD)
        return f"{_CIPHER_VERSION}:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str) -> str:
        version, _, payload = stored.partition(":")
        if version != _CIPHER_VERSION:
            raise CryptoError("unknown ciphertext format")
        try:
            raw = base64.urlsafe_b64decode(payload)
            return self._aead.decrypt(raw[:12], raw[12:], _AAD).decode("utf-8")
        except (InvalidTag, ValueError) as e:
            raise CryptoError("cannot decrypt (was ENCRYPTION_KEY changed?)") from e


def mask_secret(plain: str) -> str:
    """What the API shows of a secret: its last four characters only when it is long."""
    return "****" + plain[-4:] if len(plain) >= 16 else "****"
