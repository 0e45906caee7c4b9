"""hub/auth.py: JWTs (HS256, RS256, ES256, a JWKS file with two keys) and API keys, with real
PyJWT tokens and keys generated here (issue 11, part 1)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.auth import Authenticator, AuthPrincipal, api_key_digest, is_loopback_host
from hub.config import ApiKeyEntry, ConfigError, HubConfig
from protocol.errors import ErrorCode, HubError

SECRET = "s3cret-" + "x" * 40


def token(claims: dict[str, Any] | None = None, key: Any = SECRET, algorithm: str = "HS256",
          headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    """A token for subject alice, valid for an hour, unless ``claims``/``overrides`` say else."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 3600}
    payload.update(claims or {})
    payload.update(overrides)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def hs(**overrides: Any) -> Authenticator:
    return Authenticator(HubConfig(**{"auth_mode": "jwt", "jwt_secret": SECRET, **overrides}))


async def refused(authenticator: Authenticator, credential: str, code: str = ErrorCode.INVALID_TOKEN) -> HubError:
    with pytest.raises(HubError) as caught:
        await authenticator.authenticate(credential)
    assert caught.value.code == code
    return caught.value


# HS256 with a shared secret.


async def test_a_valid_hs256_token_gives_its_subject_and_claims() -> None:
    exp = int(time.time()) + 600
    claims = {"cbhub": {"models": ["openai/*"], "channels": ["completion:team7-*"], "rpm": 5, "tpm": 1000,
                        "max_concurrent": 2, "admin": True}}
    principal = await hs().authenticate(token(claims, exp=exp))
    assert principal == AuthPrincipal(subject="alice", admin=True, models=("openai/*",),
                                      channels=("completion:team7-*",), rpm=5, tpm=1000, max_concurrent=2,
                                      expires_at=float(exp))


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_longer_hmac_algorithms_need_a_long_enough_secret(algorithm: str) -> None:
    long_secret = "k" * 64
    principal = await hs(jwt_secret=long_secret).authenticate(token(key=long_secret, algorithm=algorithm))
    assert principal.subject == "alice"


async def test_without_cbhub_claims_no_rights_and_default_limits() -> None:
    principal = await hs().authenticate(token())
    assert (principal.admin, principal.models, principal.channels, principal.rpm) == (False, (), (), None)


async def test_an_expired_token_is_token_expired() -> None:
    error = await refused(hs(), token(exp=int(time.time()) - 60), ErrorCode.TOKEN_EXPIRED)
    assert error.message == "token expired"


async def test_expiry_within_the_leeway_is_accepted() -> None:
    assert (await hs(jwt_leeway_s=30).authenticate(token(exp=int(time.time()) - 5))).subject == "alice"
    await refused(hs(jwt_leeway_s=0), token(exp=int(time.time()) - 5), ErrorCode.TOKEN_EXPIRED)


async def test_a_token_not_yet_valid_is_refused() -> None:
    await refused(hs(jwt_leeway_s=0), token(nbf=int(time.time()) + 300))
    await refused(hs(jwt_leeway_s=0), token(iat=int(time.time()) + 300))


@pytest.mark.parametrize(("config", "claims"), [
    ({"jwt_audience": "cbhub"}, {"aud": "someone-else"}),
    ({"jwt_audience": "cbhub"}, {}),
    ({}, {"aud": "cbhub"}),  # an audience the hub was not told to expect
    ({"jwt_issuer": "https://idp.example"}, {"iss": "https://evil.example"}),
    ({"jwt_issuer": "https://idp.example"}, {}),
])
async def test_wrong_or_missing_audience_and_issuer(config: dict[str, Any], claims: dict[str, Any]) -> None:
    await refused(hs(**config), token(claims))


async def test_right_audience_and_issuer() -> None:
    authenticator = hs(jwt_audience="cbhub", jwt_issuer="https://idp.example")
    principal = await authenticator.authenticate(token({"aud": ["cbhub", "other"], "iss": "https://idp.example"}))
    assert principal.subject == "alice"


async def test_a_bad_signature_and_garbage_are_invalid_token_with_one_message() -> None:
    authenticator = hs()
    messages = set()
    for bad in (token(key="another-secret-" + "y" * 40), token()[:-4] + "AAAA", "not.a.jwt", "x", "a.b",
                token(exp=None), token(sub=None), token(sub=""), token({"cbhub": {"admin": "yes"}}),
                token({"cbhub": ["openai/*"]})):
        messages.add((await refused(authenticator, bad)).message)
    assert messages == {"invalid token"}


async def test_missing_or_oversized_credentials_are_invalid() -> None:
    await refused(hs(), "")
    await refused(hs(), "a" * 20000)


def _unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(payload)}."


async def test_alg_none_is_refused() -> None:
    payload = {"sub": "mallory", "exp": int(time.time()) + 600, "cbhub": {"admin": True}}
    await refused(hs(), _unsigned(payload))
    await refused(hs(), _unsigned(payload, "None"))
    await refused(hs(), jwt.encode(payload, None, algorithm="none"))


# RS256 / ES256 with a PEM public key file.


def pem_file(tmp_path: Path, key: Any) -> str:
    path = tmp_path / "public.pem"
    path.write_bytes(pem_public(key))
    return str(path)


async def test_rs256_with_a_public_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    authenticator = Authenticator(HubConfig(auth_mode="jwt", jwt_public_key_file=pem_file(tmp_path, rsa_key)))
    assert (await authenticator.authenticate(token(key=rsa_key, algorithm="RS256"))).subject == "alice"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(authenticator, token(key=other, algorithm="RS256"))


async def test_es256_with_a_public_key_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    authenticator = Authenticator(HubConfig(auth_mode="jwt", jwt_public_key_file=pem_file(tmp_path, ec_key)))
    assert (await authenticator.authenticate(token(key=ec_key, algorithm="ES256"))).subject == "alice"
    await refused(authenticator, token(key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))


def _hmac_token(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """An HS token signed by hand with ``secret`` (PyJWT itself refuses a PEM as an HMAC key)."""
    import hashlib
    import hmac

    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    signing_input = part({"alg": alg, "typ": "JWT"}) + b"." + part(payload)
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    signature = base64.urlsafe_b64encode(hmac.new(secret, signing_input, digest).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


async def test_hs_token_signed_with_the_rsa_public_key_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret."""
    path = pem_file(tmp_path, rsa_key)
    authenticator = Authenticator(HubConfig(auth_mode="jwt", jwt_public_key_file=path))
    payload = {"sub": "mallory", "exp": int(time.time()) + 600, "cbhub": {"admin": True}}
    public_pem = pem_public(rsa_key)
    for alg in ("HS256", "HS512"):
        await refused(authenticator, _hmac_token(payload, public_pem, alg))
        await refused(authenticator, _hmac_token(payload, public_pem.strip(), alg))
    await refused(authenticator, _unsigned(payload))


async def test_an_rs_token_is_refused_by_a_secret_hub(rsa_key: rsa.RSAPrivateKey) -> None:
    await refused(hs(), token(key=rsa_key, algorithm="RS256"))


# JWKS: a file with two keys (rotation by kid), and a URL.


def jwk_of(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data.update(kid=kid, alg=alg, use="sig")
    return data


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(rsa_key, "old", "RS256"), jwk_of(ec_key, "new", "ES256")]}))
    return str(path)


async def test_jwks_file_with_two_keys_chooses_by_kid(
        jwks_file: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    authenticator = Authenticator(HubConfig(auth_mode="jwt", jwt_jwks=jwks_file))
    old = token(key=rsa_key, algorithm="RS256", headers={"kid": "old"}, sub="before-rotation")
    new = token(key=ec_key, algorithm="ES256", headers={"kid": "new"}, sub="after-rotation")
    assert (await authenticator.authenticate(old)).subject == "before-rotation"
    assert (await authenticator.authenticate(new)).subject == "after-rotation"
    # A key under the other key's kid, an unknown kid, no kid among two keys: refused.
    await refused(authenticator, token(key=rsa_key, algorithm="RS256", headers={"kid": "new"}))
    await refused(authenticator, token(key=ec_key, algorithm="ES256", headers={"kid": "gone"}))
    await refused(authenticator, token(key=ec_key, algorithm="ES256"))
    # Algorithm confusion with a JWK's public key.
    payload = {"sub": "mallory", "exp": int(time.time()) + 600}
    public_pem = pem_public(rsa_key)
    confused = _hmac_token(payload, public_pem)
    header = {"alg": "HS256", "typ": "JWT", "kid": "old"}
    head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    await refused(authenticator, head + confused[confused.index("."):])


async def test_jwks_url(rsa_key: rsa.RSAPrivateKey, aiohttp_jwks: str) -> None:
    authenticator = Authenticator(HubConfig(auth_mode="jwt", jwt_jwks=aiohttp_jwks))
    good = token(key=rsa_key, algorithm="RS256", headers={"kid": "old"})
    assert (await authenticator.authenticate(good)).subject == "alice"
    await refused(authenticator, token(key=rsa_key, algorithm="RS256", headers={"kid": "nope"}))


@pytest.fixture
async def aiohttp_jwks(rsa_key: rsa.RSAPrivateKey) -> Any:
    from aiohttp import web

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk_of(rsa_key, "old", "RS256")]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    await runner.cleanup()


# API keys.


async def test_api_keys_by_digest() -> None:
    entries = [ApiKeyEntry(name="backend", sha256=api_key_digest("cbk-one"), models=["openai/*"], rpm=10),
               ApiKeyEntry(name="ops", sha256=api_key_digest("cbk-two").upper(), subject="ops-team", admin=True)]
    authenticator = Authenticator(HubConfig(auth_mode="api_key", api_keys=entries))
    one = await authenticator.authenticate("cbk-one")
    assert one == AuthPrincipal(subject="key:backend", models=("openai/*",), rpm=10)
    assert (await authenticator.authenticate("cbk-two")) == AuthPrincipal(subject="ops-team", admin=True)
    await refused(authenticator, "cbk-three")
    await refused(authenticator, token())  # no JWTs in this mode


async def test_jwt_or_api_key_takes_both() -> None:
    entries = [ApiKeyEntry(name="backend", sha256=api_key_digest("cbk-one"))]
    authenticator = Authenticator(HubConfig(auth_mode="jwt_or_api_key", jwt_secret=SECRET, api_keys=entries))
    assert (await authenticator.authenticate("cbk-one")).subject == "key:backend"
    assert (await authenticator.authenticate(token())).subject == "alice"
    await refused(authenticator, "cbk-nope")


# Configuration errors.


@pytest.mark.parametrize(("values", "says"), [
    ({"auth_mode": "jwt"}, "needs exactly one of"),
    ({"auth_mode": "jwt", "jwt_secret": SECRET, "jwt_jwks": "keys.json"}, "auth.jwt.secret and auth.jwt.jwks"),
    ({"auth_mode": "jwt", "jwt_secret": "short"}, "at least 32 bytes"),
    ({"auth_mode": "jwt", "jwt_public_key_file": "/nonexistent.pem"}, "auth.jwt.public_key_file"),
    ({"auth_mode": "jwt", "jwt_jwks": "/nonexistent.json"}, "auth.jwt.jwks"),
    ({"auth_mode": "api_key"}, "auth.api_keys"),
    ({"auth_mode": "api_key", "api_keys": [ApiKeyEntry(name="k", sha256="abc")]}, "64 hex digits"),
])
def test_config_errors_name_the_key(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Authenticator(HubConfig(**values))


def test_mode_none_needs_nothing() -> None:
    assert not Authenticator(HubConfig()).enabled


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.com", False), ("", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
