"""Key generation and hashing, JWTs, AES-GCM secrets and masking (pure logic)."""

from __future__ import annotations

import base64
import re
import time

import jwt
import pytest

from metamcp import crypto

SECRET = "k" * 64


def test_api_key_format_and_entropy() -> None:
    keys = {crypto.generate_api_key().plain for _ in range(50)}
    assert len(keys) == 50
    for plain in keys:
        assert re.fullmatch(r"mcp_[A-Za-z0-9_-]{43}", plain)
        raw = base64.urlsafe_b64decode(plain[4:] + "=")
        assert len(raw) == 32


def test_hash_is_stable_and_prefix_is_short() -> None:
    new = crypto.generate_api_key()
    assert crypto.hash_api_key(new.plain) == new.hash
    assert len(new.hash) == 32
    assert new.plain.startswith(new.prefix) and len(new.prefix) == 12


def test_jwt_round_trip_and_claims() -> None:
    token = crypto.issue_jwt(7, SECRET, 900, role="client")
    assert crypto.verify_jwt(token, SECRET) == crypto.TokenClaims(7, "client")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "role", "iat", "exp", "jti"}
    assert claims["exp"] - claims["iat"] == 900
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize(
    "token",
    [
        crypto.issue_jwt(7, SECRET, 60, now=time.time() - 120, role="admin"),  # expired
        crypto.issue_jwt(7, "other" * 10, 60, role="admin"),  # wrong secret
        jwt.encode({"sub": "7", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no jti/iat
        jwt.encode({"sub": "7", "iat": 1, "exp": int(time.time()) + 60, "jti": "x"}, SECRET,
                   algorithm="HS256"),  # no role (issued before roles existed)
        jwt.encode({"sub": "7", "iat": 1, "exp": int(time.time()) + 60, "jti": "x"}, SECRET,
                   algorithm="HS512"),  # other algorithm
        "not-a-jwt",
    ],
)
def test_bad_jwts_are_rejected(token: str) -> None:
    with pytest.raises(crypto.CryptoError):
        crypto.verify_jwt(token, SECRET)


def test_secret_box_round_trip_is_randomized() -> None:
    box = crypto.SecretBox(bytes(32))
    one, two = box.encrypt("hunter2"), box.encrypt("hunter2")
    assert one != two and "hunter2" not in one
    assert box.decrypt(one) == box.decrypt(two) == "hunter2"


def test_secret_box_rejects_tampering_and_wrong_key() -> None:
    sealed = crypto.SecretBox(bytes(32)).encrypt("hunter2")
    with pytest.raises(crypto.CryptoError):
        crypto.SecretBox(bytes([1] * 32)).decrypt(sealed)
    middle = len(sealed) // 2  # a ciphertext byte: the last characters may be padding bits only
    flipped = sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1:]
    with pytest.raises(crypto.CryptoError):
        crypto.SecretBox(bytes(32)).decrypt(flipped)
    with pytest.raises(crypto.CryptoError):
        crypto.SecretBox(bytes(32)).decrypt("v0:abc")


def test_mask_shows_at_most_four_characters() -> None:
    assert crypto.mask_secret("short") == "****"
    assert crypto.mask_secret("a-long-secret-token-1234") == "****1234"
