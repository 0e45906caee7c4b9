"""Who a client is: JWTs and API keys turned into a principal (docs/PROTOCOL.md "Authentication").

An :class:`Authenticator` is built once from the :class:`~hub.config.HubConfig`; its
:meth:`~Authenticator.authenticate` takes the credential a client presented (an
``Authorization: Bearer`` value, a ``?token=`` parameter or the token of an ``auth`` message)
and returns an :class:`AuthPrincipal`, or raises :class:`~protocol.errors.HubError` with code
``invalid_token`` or ``token_expired``. Which check failed is never said beyond those two
codes: the message is the same for a bad signature, a wrong audience, a missing claim or an
unknown API key.

Credentials by ``auth.mode``:

- ``jwt``: a JWT verified with PyJWT. The key source is exactly one of ``auth.jwt.secret``
  (HS256/384/512), ``auth.jwt.public_key_file`` (a PEM public key: RS256/384/512 for RSA,
  the ES algorithm of an EC key's curve, EdDSA) or ``auth.jwt.jwks`` (a JWKS file or an
  ``http(s)://`` URL; the key is chosen by the token's ``kid``, the algorithm by the key).
  Only the algorithms of the configured key's type are accepted, so ``alg: none`` and an HS
  token "signed" with an RSA public key are refused. ``exp`` and ``sub`` are required;
  ``exp``, ``nbf`` and ``iat`` are checked with ``auth.jwt.leeway_s``; ``aud`` and ``iss``
  are checked when configured, and a token that carries an ``aud`` is refused when the hub has
  no ``auth.jwt.audience`` (PyJWT's rule). The hub's own claims are one object ``cbhub``:
  ``models``, ``channels``, ``rpm``, ``tpm``, ``max_concurrent``, ``admin``.
- ``api_key``: the SHA-256 digest of the presented key is compared in constant time
  (``hmac.compare_digest``) with every entry of ``auth.api_keys``; the key itself is never
  stored. The entry gives the subject (default ``key:<name>``) and the claims.
- ``jwt_or_api_key``: an API key when one matches, else a JWT.
- ``none``: no authentication (:data:`hub.session.ANONYMOUS`); the authenticator is not used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hub.config import ApiKeyEntry, ConfigError, HubConfig
from protocol.errors import ErrorCode, HubError
from protocol.messages import MAX_TOKEN_CHARS

__all__ = ["AuthPrincipal", "Authenticator", "HS_ALGORITHMS", "api_key_digest", "is_loopback_host"]

log = logging.getLogger("cbhub.auth")

#: The HMAC algorithms a shared secret verifies.
HS_ALGORITHMS = ("HS256", "HS384", "HS512")
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
#: The shortest shared secret accepted (RFC 7518 §3.2: at least the hash output, 256 bits).
MIN_SECRET_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class AuthPrincipal:
    """An authenticated client (satisfies :class:`hub.session.Principal`).

    Attributes:
        subject: the token's ``sub`` or the API key's subject.
        admin: may read every channel, type-level subscriptions and ``system``.
        models: allowed model patterns (``openai/*``); empty: every model.
        channels: channel patterns readable besides the subject's own (``completion:team7-*``).
        rpm, tpm, max_concurrent: limits of this principal; None: ``auth.default_limits``.
        expires_at: when the credential expires, in seconds since the epoch (a JWT's ``exp``);
            None for an API key.
    """

    subject: str
    admin: bool = False
    models: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    expires_at: float | None = None


class _HubClaims(msgspec.Struct):
    """The ``cbhub`` claim of a token (unknown members are ignored, for later versions)."""

    models: list[str] = []
    channels: list[str] = []
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    admin: bool = False


def api_key_digest(key: str) -> str:
    """The hex SHA-256 digest of an API key, as ``auth.api_keys`` stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback_host(host: str) -> bool:
    """Whether the listen address ``host`` reaches this machine only (``127.0.0.1``, ``::1``,
    ``localhost``). Any other name or address, ``0.0.0.0`` and ``::`` included, is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _invalid() -> HubError:
    return HubError("invalid token", ErrorCode.INVALID_TOKEN)


def _expired() -> HubError:
    return HubError("token expired", ErrorCode.TOKEN_EXPIRED)


class Authenticator:
    """Verifies credentials for ``auth.mode`` (see the module docstring).

    Args:
        config: the hub config (``auth.*``).

    Raises:
        ConfigError: the mode needs a key source that is missing, two JWT key sources are
            set, the secret is shorter than 32 bytes, a key file cannot be read or parsed, or
            an ``auth.api_keys`` digest is not 64 hex digits.
    """

    def __init__(self, config: HubConfig) -> None:
        self.mode = config.auth_mode
        self.enabled = self.mode != "none"
        self._accepts_jwt = self.mode in ("jwt", "jwt_or_api_key")
        self._accepts_keys = self.mode in ("api_key", "jwt_or_api_key")
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._leeway = config.jwt_leeway_s
        self._api_keys = [(self._digest_of(entry), entry) for entry in config.api_keys] if self._accepts_keys else []
        # The JWT key source: exactly one of these is set when JWTs are accepted.
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        if self.mode == "api_key" and not self._api_keys:
            raise ConfigError("config error: auth.mode api_key needs at least one entry in auth.api_keys "
                              "(cbhub keys new prints one)")
        if self._accepts_jwt:
            self._load_jwt_key(config)

    @staticmethod
    def _digest_of(entry: ApiKeyEntry) -> bytes:
        try:
            digest = bytes.fromhex(entry.sha256)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"config error: auth.api_keys entry {entry.name!r}: sha256 must be 64 hex digits")
        return digest

    def _load_jwt_key(self, config: HubConfig) -> None:
        sources = [name for name, value in (("auth.jwt.secret", config.jwt_secret),
                                            ("auth.jwt.public_key_file", config.jwt_public_key_file),
                                            ("auth.jwt.jwks", config.jwt_jwks)) if value]
        if len(sources) != 1:
            found = f"got {' and '.join(sources)}" if sources else "none is set"
            raise ConfigError(f"config error: auth.mode {self.mode} needs exactly one of auth.jwt.secret, "
                              f"auth.jwt.public_key_file and auth.jwt.jwks; {found}")
        if config.jwt_secret:
            if len(config.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"config error: auth.jwt.secret must be at least {MIN_SECRET_BYTES} bytes "
                                  "(RFC 7518 §3.2); e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'")
            self._key = config.jwt_secret.encode()
            self._algorithms = list(HS_ALGORITHMS)
        elif config.jwt_public_key_file:
            self._key, self._algorithms = _load_public_key(config.jwt_public_key_file)
        elif config.jwt_jwks:
            source = config.jwt_jwks
            if source.startswith(("http://", "https://")):
                # Keys are fetched on first use and when a token names an unknown `kid`
                # (PyJWKClient's cache); the blocking fetch runs in a thread.
                self._jwks_client = jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=10)
            else:
                try:
                    self._jwks = jwt.PyJWKSet.from_json(Path(source).read_text(encoding="utf-8"))
                except (OSError, ValueError, jwt.PyJWTError) as exc:
                    raise ConfigError(f"config error: auth.jwt.jwks {source!r}: cannot load a JWK set: {exc}") from None

    # Verifying.

    async def authenticate(self, token: str) -> AuthPrincipal:
        """The principal ``token`` (a JWT or an API key, as the mode allows) stands for.

        Raises:
            HubError: ``invalid_token`` (anything wrong with it, never saying what) or
                ``token_expired``.
        """
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise _invalid()
        if self._accepts_keys:
            principal = self._api_key_principal(token)
            if principal is not None:
                return principal
        if not self._accepts_jwt:
            raise _invalid()
        if self._jwks_client is not None:
            key, algorithms = await asyncio.to_thread(self._remote_key, token)
        else:
            key, algorithms = self._local_key(token)
        return self._decode(token, key, algorithms)

    def _api_key_principal(self, key: str) -> AuthPrincipal | None:
        """The principal of the entry whose digest matches, or None. Every entry is compared
        (in constant time each), whether or not an earlier one matched."""
        digest = hashlib.sha256(key.encode()).digest()
        found: ApiKeyEntry | None = None
        for expected, entry in self._api_keys:
            if hmac.compare_digest(digest, expected) and found is None:
                found = entry
        if found is None:
            return None
        return AuthPrincipal(subject=found.subject or f"key:{found.name}", admin=found.admin,
                             models=tuple(found.models), channels=tuple(found.channels), rpm=found.rpm,
                             tpm=found.tpm, max_concurrent=found.max_concurrent)

    def _local_key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            return self._key, self._algorithms
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise _invalid() from None
        keys = self._jwks.keys
        if kid is None:
            if len(keys) != 1:
                raise _invalid()
            chosen = keys[0]
        else:
            matching = [key for key in keys if key.key_id == kid]
            if not matching:
                raise _invalid()
            chosen = matching[0]
        return chosen, [chosen.algorithm_name]

    def _remote_key(self, token: str) -> tuple[Any, list[str]]:
        """(In a thread.) The JWKS URL's key for the token's ``kid``."""
        assert self._jwks_client is not None
        try:
            chosen = self._jwks_client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("auth.jwt.jwks: cannot fetch the JWK set: %s", exc)
            raise _invalid() from None
        except (jwt.PyJWTError, ValueError, KeyError):
            raise _invalid() from None
        return chosen, [chosen.algorithm_name]

    def _decode(self, token: str, key: Any, algorithms: Sequence[str]) -> AuthPrincipal:
        try:
            claims = jwt.decode(
                token, key, algorithms=list(algorithms), audience=self._audience, issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_signature": True, "verify_exp": True,
                         "verify_nbf": True, "verify_iat": True, "verify_aud": True, "verify_iss": True,
                         "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise _expired() from None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise _invalid() from None
        subject = claims.get("sub")
        exp = claims.get("exp")
        if not isinstance(subject, str) or not subject or not isinstance(exp, int | float):
            raise _invalid()
        try:
            hub_claims = msgspec.convert(claims.get("cbhub") or {}, _HubClaims)
        except msgspec.ValidationError:
            raise _invalid() from None
        return AuthPrincipal(subject=subject, admin=hub_claims.admin, models=tuple(hub_claims.models),
                             channels=tuple(hub_claims.channels), rpm=hub_claims.rpm, tpm=hub_claims.tpm,
                             max_concurrent=hub_claims.max_concurrent, expires_at=float(exp))


def _load_public_key(path: str) -> tuple[Any, list[str]]:
    """The public key in the PEM file ``path`` and the algorithms of its type only."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config error: auth.jwt.public_key_file {path!r}: not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, list(_RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is not None:
            return key, [algorithm]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key, ["EdDSA"]
    raise ConfigError(f"config error: auth.jwt.public_key_file {path!r}: unsupported key type "
                      f"{type(key).__name__} (RSA, EC P-256/384/521 or Ed25519)")
