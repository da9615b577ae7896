"""``jwt_scope``: the scope of a request from a verified JSON Web Token (PyJWT).

The token comes as ``Authorization: Bearer <token>``, or, for a browser's
``EventSource`` (which cannot set headers), as the ``?access_token=`` query
parameter. A request without a valid token never reaches the supervisor: it is
answered 401 with a ``WWW-Authenticate: Bearer`` header (RFC 6750) and a body
naming what was wrong (``MissingToken``, ``ExpiredToken``,
``InvalidSignature``, ``InvalidAudience``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
from starlette.requests import Request

from ._errors import HTTPError

__all__ = ["ACCESS_TOKEN_PARAM", "AuthenticationFailed", "jwt_scope"]

#: The query parameter that may carry the token (for ``EventSource``).
ACCESS_TOKEN_PARAM = "access_token"
_REALM = "sessionvisor"
_MAX_TOKEN_LENGTH = 16 * 1024
_DEFAULT_ALGORITHMS = {"secret": ["HS256"], "public_key": ["RS256", "ES256"]}
_JWK_ALGORITHMS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


class AuthenticationFailed(HTTPError):
    """A request without a valid token: 401 with a ``WWW-Authenticate`` header."""

    def __init__(self, error: str, detail: str, *, invalid: bool = True) -> None:
        super().__init__(401, error, detail)
        challenge = f'Bearer realm="{_REALM}"'
        if invalid:
            # RFC 6750: an invalid token says so; a missing one gets the bare challenge.
            safe = detail.replace("\\", "").replace('"', "'")
            challenge += f', error="invalid_token", error_description="{safe}"'
        self.headers = {"WWW-Authenticate": challenge}


# PyJWT's errors, most specific first, as (class, error name, detail).
_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "ExpiredToken", "the token has expired"),
    (jwt.ImmatureSignatureError, "TokenNotYetValid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "InvalidAudience", "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "InvalidIssuer", "the token's issuer is not accepted"),
    (jwt.InvalidSignatureError, "InvalidSignature", "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "InvalidToken", "the token's algorithm is not accepted"),
    (jwt.InvalidKeyError, "InvalidToken", "the token's algorithm does not fit the key"),
    (jwt.DecodeError, "InvalidToken", "the token is not a well-formed JWT"),
)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {os.fspath(path)!r}: {exc}") from None


def _jwks(value: Mapping[str, Any] | str | bytes) -> jwt.PyJWKSet:
    try:
        data = json.loads(value) if isinstance(value, str | bytes) else dict(value)
        return jwt.PyJWKSet.from_dict(data)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise ValueError(f"not a usable JWKS (a JSON object with 'keys'): {exc}") from None


def jwt_scope(
    *,
    secret: str | bytes | None = None,
    public_key: str | bytes | None = None,
    jwks: Mapping[str, Any] | str | bytes | None = None,
    secret_file: str | os.PathLike[str] | None = None,
    public_key_file: str | os.PathLike[str] | None = None,
    jwks_file: str | os.PathLike[str] | None = None,
    algorithms: Sequence[str] | None = None,
    audience: str | Sequence[str] | None = None,
    issuer: str | Sequence[str] | None = None,
    leeway: float = 0.0,
    require: Sequence[str] = ("exp",),
    owner_claim: str = "sub",
    claims_to_scope: Callable[[dict[str, Any]], Any] | None = None,
    query_param: str | None = ACCESS_TOKEN_PARAM,
) -> Callable[[Request], Any]:
    """Return a ``scope_from_request`` that verifies a bearer JWT and builds the scope from it.

    Give exactly one key: an HS256 ``secret``, a PEM ``public_key`` (RS256 or
    ES256), or a ``jwks`` key set (the key is picked by the token's ``kid``),
    or the file holding one of them. ``exp`` and ``nbf`` are always checked
    when present (with ``leeway`` seconds of slack), ``aud`` and ``iss``
    when ``audience``/``issuer`` are given, and the claims in ``require`` must
    be present.

    The scope is ``{"owner": claims[owner_claim], "claims": claims}`` (so the
    default ``owner_of`` reads the owner from ``sub``), or whatever
    ``claims_to_scope(claims)`` returns: map roles or tenants there, the
    claims your factories and routers should trust.

    Usage::

        app = create_app(sup, scope_from_request=jwt_scope(jwks_file="jwks.json",
                                                           audience="chat-api"))

    Raises:
        ValueError: no key, more than one, or a key that cannot be read.
    """
    given = {
        name: value
        for name, value in {
            "secret": secret,
            "public_key": public_key,
            "jwks": jwks,
            "secret_file": secret_file,
            "public_key_file": public_key_file,
            "jwks_file": jwks_file,
        }.items()
        if value is not None
    }
    if len(given) != 1:
        raise ValueError(
            "jwt_scope needs exactly one key: secret, public_key, jwks or one of their "
            f"*_file forms; got {sorted(given) or 'none'}"
        )
    if claims_to_scope is not None and not callable(claims_to_scope):
        raise TypeError(f"claims_to_scope must be callable, got {claims_to_scope!r}")
    if leeway < 0:
        raise ValueError(f"leeway must be >= 0 seconds, got {leeway!r}")
    if secret_file is not None:
        secret = _read(secret_file, "JWT secret").strip()
    if public_key_file is not None:
        public_key = _read(public_key_file, "JWT public key")
    key_set = None
    if jwks_file is not None:
        key_set = _jwks(_read(jwks_file, "JWKS"))
    elif jwks is not None:
        key_set = _jwks(jwks)
    if secret is not None and not secret:
        raise ValueError("the JWT secret is empty")
    static_key: Any = secret if secret is not None else public_key
    kind = "secret" if secret is not None else "public_key"
    allowed = list(algorithms) if algorithms else None
    if allowed is not None and not allowed:
        raise ValueError("algorithms must not be empty")
    audiences = [audience] if isinstance(audience, str) else audience
    options = {"require": list(require), "verify_aud": audience is not None}

    def key_for(token: str) -> tuple[Any, list[str]]:
        if key_set is None:
            return static_key, allowed or _DEFAULT_ALGORITHMS[kind]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise _failure(exc) from None
        keys = key_set.keys
        match = [k for k in keys if k.key_id == kid] if kid is not None else keys
        if len(match) != 1:
            raise AuthenticationFailed(
                "InvalidSignature",
                "no key of the key set matches the token's key id"
                if kid is not None
                else "the token names no key id and the key set has several keys",
            )
        jwk = match[0]
        algorithm = jwk.algorithm_name or _JWK_ALGORITHMS.get(str(jwk.key_type), "RS256")
        return jwk.key, allowed or [algorithm]

    def scope_from_request(request: Request) -> Any:
        token = _token(request, query_param)
        key, algs = key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algs,
                audience=audiences,
                issuer=issuer,
                leeway=leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise _failure(exc) from None
        except (ValueError, TypeError):
            # cryptography refusing a key for the token's algorithm (e.g. an EC token, RSA key)
            raise AuthenticationFailed(
                "InvalidToken", "the token's algorithm does not fit the key"
            ) from None
        if claims_to_scope is not None:
            return claims_to_scope(claims)
        owner = claims.get(owner_claim)
        if not isinstance(owner, str) or not owner:
            raise AuthenticationFailed(
                "InvalidToken", f"the token has no {owner_claim!r} claim naming its owner"
            )
        return {"owner": owner, "claims": claims}

    return scope_from_request


def _token(request: Request, query_param: str | None) -> str:
    header = request.headers.get("authorization")
    token: str | None = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationFailed(
                "InvalidToken", "the Authorization header must be 'Bearer <token>'"
            )
        token = value.strip()
    elif query_param is not None:
        token = request.query_params.get(query_param) or None
    if token is None:
        where = "an Authorization: Bearer header"
        if query_param is not None:
            where += f" or ?{query_param}="
        raise AuthenticationFailed("MissingToken", f"a token is required: {where}", invalid=False)
    if len(token) > _MAX_TOKEN_LENGTH:
        raise AuthenticationFailed("InvalidToken", "the token is too long")
    return token


def _failure(exc: Exception) -> AuthenticationFailed:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthenticationFailed("InvalidToken", f"the token has no {exc.claim!r} claim")
    for cls, error, detail in _ERRORS:
        if isinstance(exc, cls):
            return AuthenticationFailed(error, detail)
    return AuthenticationFailed("InvalidToken", "the token is not valid")
