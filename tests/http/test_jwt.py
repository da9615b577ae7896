"""``jwt_scope``: real tokens (HS256, RS256, ES256, a JWKS file) decide who owns what.

Every token here is signed with PyJWT and keys made by ``cryptography``; the
app is the real one, through the ASGI interface, on asyncio and trio.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sessionvisor.http import jwt_scope

from ._support import asgi_stream, open_app

pytestmark = pytest.mark.anyio

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUDIENCE = "chat-api"
ISSUER = "https://issuer.example"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600, **extra}


def hs(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def forge_hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with a public key: the algorithm-confusion attack."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signed, hashlib.sha256).digest()
    return (signed + b"." + b64(signature)).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hs_scope(**options: Any) -> Any:
    return jwt_scope(secret=SECRET, audience=AUDIENCE, issuer=ISSUER, **options)


async def send(env: Any, cid: str, headers: dict[str, str]) -> Any:
    return await env.client.post(
        f"/conversations/{cid}/messages", json={"content": "hi"}, headers=headers
    )


async def test_a_valid_token_names_the_owner_and_another_subject_gets_404() -> None:
    async with open_app(scope_from_request=hs_scope()) as env:
        sent = await send(env, "c-1", bearer(hs(claims("alice"))))
        assert sent.status_code == 202, sent.text
        own = await env.client.get("/conversations/c-1", headers=bearer(hs(claims("alice"))))
        assert own.status_code == 200
        other = await env.client.get("/conversations/c-1", headers=bearer(hs(claims("bob"))))
        assert other.status_code == 404
        assert other.json()["error"] == "NotFound"


@pytest.mark.parametrize(
    ("token", "error", "detail"),
    [
        (lambda: hs(claims(exp=int(time.time()) - 60)), "ExpiredToken", "expired"),
        (lambda: hs(claims(), secret=SECRET[::-1]), "InvalidSignature", "signature"),
        (lambda: hs(claims(aud="someone-else")), "InvalidAudience", "audience"),
        (lambda: hs(claims(iss="https://evil.example")), "InvalidIssuer", "issuer"),
        (lambda: hs(claims(nbf=int(time.time()) + 3600)), "TokenNotYetValid", "not valid yet"),
        (lambda: hs({k: v for k, v in claims().items() if k != "exp"}), "InvalidToken", "'exp'"),
        (lambda: hs({k: v for k, v in claims().items() if k != "sub"}), "InvalidToken", "'sub'"),
        (lambda: "not.a.jwt", "InvalidToken", "well-formed"),
        (lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"), "InvalidToken", "algorithm"),
    ],
    ids=["expired", "bad-signature", "wrong-audience", "wrong-issuer", "not-yet-valid",
         "no-exp", "no-sub", "malformed", "wrong-algorithm"],
)  # fmt: skip
async def test_a_bad_token_is_401_naming_the_problem(token: Any, error: str, detail: str) -> None:
    async with open_app(scope_from_request=hs_scope()) as env:
        answer = await send(env, "c-1", bearer(token()))
        assert answer.status_code == 401
        assert answer.json()["error"] == error
        assert detail in answer.json()["detail"]
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="sessionvisor"')
        assert 'error="invalid_token"' in challenge
        # Nothing was created on the way.
        assert await env.sup.load("c-1") is None


async def test_a_missing_token_is_401_with_a_bare_challenge() -> None:
    async with open_app(scope_from_request=hs_scope()) as env:
        for headers in ({}, {"X-User": "alice"}):
            answer = await send(env, "c-1", headers)
            assert answer.status_code == 401
            assert answer.json()["error"] == "MissingToken"
            assert answer.headers["www-authenticate"] == 'Bearer realm="sessionvisor"'
        basic = await send(env, "c-1", {"Authorization": "Basic YWxpY2U6cHc="})
        assert basic.status_code == 401
        assert basic.json()["error"] == "InvalidToken"
        assert (await env.client.get("/sessions")).status_code == 401


@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
async def test_public_key_tokens_verify(key: Any, tmp_path: Path) -> None:
    algorithm = "RS256" if key is RSA_KEY else "ES256"
    path = tmp_path / "public.pem"
    path.write_bytes(pem(key))
    scope = jwt_scope(public_key_file=path, audience=AUDIENCE)
    async with open_app(scope_from_request=scope) as env:
        good = await send(env, "c-1", bearer(jwt.encode(claims(), key, algorithm=algorithm)))
        assert good.status_code == 202, good.text
        # An HS256 token "signed" with the public key itself must not pass.
        forged = await send(env, "c-1", bearer(forge_hs256(claims(), pem(key))))
        assert forged.status_code == 401


async def test_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    keys = []
    for kid, key in (("rsa-1", RSA_KEY), ("ec-1", EC_KEY)):
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()["RS256" if key is RSA_KEY else "ES256"].to_jwk(
                key.public_key()
            )
        )
        jwk.update({"kid": kid, "use": "sig"})
        keys.append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    scope = jwt_scope(jwks_file=path, audience=AUDIENCE)
    async with open_app(scope_from_request=scope) as env:
        rsa_token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        ec_token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
        assert (await send(env, "c-1", bearer(rsa_token))).status_code == 202
        assert (await send(env, "c-1", bearer(ec_token))).status_code == 202
        unknown = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "gone"})
        answer = await send(env, "c-1", bearer(unknown))
        assert answer.status_code == 401
        assert answer.json()["error"] == "InvalidSignature"
        # The right kid with the wrong key's signature.
        swapped = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})
        assert (await send(env, "c-1", bearer(swapped))).status_code == 401


async def test_the_event_stream_takes_the_token_as_a_query_parameter() -> None:
    async with open_app(scope_from_request=hs_scope()) as env:
        token = hs(claims("alice"))
        async with asgi_stream(
            env.app, "/conversations/c-1/events", headers={}, query=f"access_token={token}"
        ) as stream:
            first = await stream.event()
            assert first.data["status"] == "not_running"
        async with asgi_stream(env.app, "/conversations/c-1/events", headers={}) as refused:
            answer = await refused.json()
            assert answer["error"] == "MissingToken"
            assert refused.status == 401


async def test_a_claims_hook_builds_the_scope() -> None:
    def by_email(verified: dict[str, Any]) -> dict[str, Any]:
        return {"owner": verified["email"], "roles": verified.get("roles", [])}

    async with open_app(scope_from_request=hs_scope(claims_to_scope=by_email)) as env:
        first = hs(claims("device-1", email="alice@example.com"))
        second = hs(claims("device-2", email="alice@example.com"))
        stranger = hs(claims("device-3", email="bob@example.com"))
        assert (await send(env, "c-1", bearer(first))).status_code == 202
        assert (
            await env.client.get("/conversations/c-1", headers=bearer(second))
        ).status_code == 200
        assert (
            await env.client.get("/conversations/c-1", headers=bearer(stranger))
        ).status_code == 404


def test_jwt_scope_needs_exactly_one_readable_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one key"):
        jwt_scope()
    with pytest.raises(ValueError, match="exactly one key"):
        jwt_scope(secret=SECRET, public_key=pem(RSA_KEY))
    with pytest.raises(ValueError, match="cannot read"):
        jwt_scope(secret_file=tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="JWKS"):
        jwt_scope(jwks_file=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="leeway"):
        jwt_scope(secret=SECRET, leeway=-1)


async def test_the_frontend_routes_take_the_same_tokens() -> None:
    chat = {
        "id": "c-1",
        "messages": [{"id": "m-1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    run = {
        "threadId": "c-2",
        "runId": "r-1",
        "messages": [{"id": "u", "role": "user", "content": "hi"}],
    }
    async with open_app(scope_from_request=hs_scope()) as env:
        for path, body in (("/ai-sdk/chat", chat), ("/ag-ui", run)):
            refused = await env.client.post(path, json=body)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            answer = await env.client.post(path, json=body, headers=bearer(hs(claims("alice"))))
            assert answer.status_code == 200
            assert answer.text.rstrip().endswith(
                ("[DONE]", '"RUN_FINISHED","threadId":"c-2","runId":"r-1"}')
            )
        bob = bearer(hs(claims("bob")))
        stream = await env.client.get("/ai-sdk/chat/c-1/stream", headers=bob)
        unknown = await env.client.get("/ai-sdk/chat/c-unknown/stream", headers=bob)
        # Another owner's conversation answers as an unknown one does (issue 17, item 6).
        assert (stream.status_code, stream.text) == (unknown.status_code, unknown.text)
        assert (await env.client.get("/ai-sdk/chat/c-1/stream")).status_code == 401


async def test_the_query_token_is_accepted_on_the_get_streams_only() -> None:
    """``?access_token=`` lands in access logs and proxies' logs: only ``EventSource``
    (which cannot send headers) gets to use it; everywhere else it counts for nothing."""
    token = hs(claims("alice"))
    query = {"access_token": token}
    async with open_app(scope_from_request=hs_scope()) as env:
        elsewhere: list[tuple[str, str, Any]] = [
            ("POST", "/conversations/c-1/messages", {"content": "hi"}),
            ("GET", "/conversations/c-1", None),
            ("DELETE", "/conversations/c-1", None),
            ("GET", "/sessions", None),
            ("GET", "/admin/sessions", None),
            ("POST", "/conversations/c-1/cancel", {}),
            ("POST", "/ai-sdk/chat", {"id": "c-1", "messages": []}),
            ("POST", "/ag-ui", {"threadId": "c-1"}),
        ]
        for method, path, body in elsewhere:
            answer = await env.client.request(method, path, json=body, params=query)
            assert answer.status_code == 401, (answer.request.url, answer.text)
            assert answer.json()["error"] == "MissingToken"
            assert "only on the event streams" in answer.json()["detail"]
        assert await env.sup.load("c-1") is None
        # The header still works there, whatever the query says.
        sent = await send(env, "c-1", bearer(token))
        assert sent.status_code == 202, sent.text
        # The two GET streams take it.
        async with asgi_stream(
            env.app, "/conversations/c-1/events", headers={}, query=f"access_token={token}"
        ) as stream:
            assert stream.status == 200
        resumed = await env.client.get("/ai-sdk/chat/c-1/stream", params=query)
        assert resumed.status_code != 401, resumed.text


async def test_the_query_token_works_on_the_streams_of_a_mounted_app() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    token = hs(claims("alice"))
    async with open_app(scope_from_request=hs_scope()) as env:
        parent = Starlette(routes=[Mount("/chat", app=env.app)])
        async with asgi_stream(
            parent, "/chat/conversations/c-1/events", headers={}, query=f"access_token={token}"
        ) as stream:
            assert stream.status == 200
        async with asgi_stream(
            parent, "/chat/conversations/c-1", headers={}, query=f"access_token={token}"
        ) as refused:
            assert refused.status == 401


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"secret": "x"}, "32 bytes"),
        ({"secret": "s" * 31}, "32 bytes"),
        ({"secret": "s" * 47, "algorithms": ["HS384"]}, "48 bytes"),
        ({"secret": "s" * 63, "algorithms": ["HS256", "HS512"]}, "64 bytes"),
        ({"secret": SECRET, "algorithms": ["none"]}, "'none'"),
        ({"secret": SECRET, "algorithms": ["HS256", "NoNe"]}, "'none'"),
        ({"public_key": pem(RSA_KEY), "algorithms": ["None"]}, "'none'"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "RS256"),
        ({"public_key": pem(RSA_KEY), "algorithms": ["HS256"]}, "HS256"),
    ],
    ids=["1-byte", "31-bytes", "hs384-47", "hs512-63", "none", "mixed-case-none",
         "none-with-public-key", "secret-with-rs256", "public-key-with-hs256"],
)  # fmt: skip
def test_jwt_scope_refuses_unsafe_configurations(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        jwt_scope(**options)
    # The command line names its own option from the parameter.
    assert type(raised.value).__name__ == "JWTConfigError"
    assert getattr(raised.value, "parameter", None) in ("secret", "algorithms")


def test_a_short_secret_file_and_a_short_jwks_key_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "secret"
    short.write_text("s" * 31 + "\n")
    with pytest.raises(ValueError, match="32 bytes"):
        jwt_scope(secret_file=short)
    oct_key = base64.urlsafe_b64encode(b"k" * 16).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "oct", "k": oct_key, "alg": "HS256", "kid": "short"}]}
    with pytest.raises(ValueError, match="32 bytes"):
        jwt_scope(jwks=jwks)
    # The minimum itself is fine.
    jwt_scope(secret="s" * 32)
    jwt_scope(secret=b"s" * 64, algorithms=["HS512"])


def test_without_a_recorded_route_the_path_inside_the_app_decides() -> None:
    """A scope function called outside Starlette's routing (or on an older Starlette,
    which does not record the route) matches the path against the route templates."""
    from starlette.requests import Request

    scope_from_request = hs_scope()
    token = hs(claims("alice"))

    def request(method: str, path: str, root_path: str = "") -> Request:
        return Request({
            "type": "http", "method": method, "path": path, "root_path": root_path,
            "query_string": f"access_token={token}".encode(), "headers": [],
        })  # fmt: skip

    assert scope_from_request(request("GET", "/conversations/c-1/events"))["owner"] == "alice"
    assert scope_from_request(request("GET", "/ai-sdk/chat/c-1/stream"))["owner"] == "alice"
    mounted = request("GET", "/chat/conversations/c-1/events", root_path="/chat")
    assert scope_from_request(mounted)["owner"] == "alice"
    for method, path in (
        ("POST", "/conversations/c-1/events"),
        ("GET", "/conversations/c-1"),
        ("GET", "/conversations/c-1/events/more"),
        ("GET", "/x/conversations/c-1/events"),
    ):
        with pytest.raises(Exception, match="only on the event streams"):
            scope_from_request(request(method, path))
