"""``jwt_scope``: the scope of a request from a verified JSON Web Token (PyJWT).

The token comes as ``Authorization: Bearer <token>``, or, on the two GET event
streams only (where a browser's ``EventSource`` cannot set headers), as the
``?access_token=`` query parameter: a URL ends up in access logs, proxies and
browser history, so everywhere else a token in the query counts for nothing
(401 ``MissingToken`` without the header). A request without a valid token
never reaches the supervisor: it is answered 401 with a ``WWW-Authenticate:
Bearer`` header (RFC 6750) and a body naming what was wrong (``MissingToken``,
``ExpiredToken``, ``InvalidSignature``, ``InvalidAudience``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import jwt
from starlette.requests import Request

from ._errors import HTTPError
from ._openapi import bearer_security
from ._scope import route_matcher

__all__ = [
    "ACCESS_TOKEN_PARAM",
    "QUERY_TOKEN_ROUTES",
    "AuthenticationFailed",
    "JWTConfigError",
    "jwt_scope",
]

#: The query parameter that may carry the token (for ``EventSource``).
ACCESS_TOKEN_PARAM = "access_token"
#: The routes (as declared, relative to the app) where a GET may carry the token
#: in ``?access_token=``: the event streams a browser opens with ``EventSource``.
QUERY_TOKEN_ROUTES = frozenset({"/conversations/{cid}/events", "/ai-sdk/chat/{cid}/stream"})
_REALM = "sessionvisor"
_MAX_TOKEN_LENGTH = 16 * 1024
_DEFAULT_ALGORITHMS = {"secret": ["HS256"], "public_key": ["RS256", "ES256"]}
_JWK_ALGORITHMS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


class JWTConfigError(ValueError):
    """A ``jwt_scope`` configuration that would accept forged tokens, or cannot work.

    ``parameter`` names the ``jwt_scope`` argument at fault (``"secret"``,
    ``"algorithms"``, ``"jwks"``), so a caller such as the command line can
    name its own option for it.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


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
    query_routes: Collection[str] = QUERY_TOKEN_ROUTES,
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

    The token is read from ``Authorization: Bearer``; ``?{query_param}=`` is
    read only on a GET of one of ``query_routes`` (route paths as the app
    declares them; by default the two event streams), because a URL is logged
    by servers and proxies. Pass ``query_param=None`` to refuse it everywhere.

    An HMAC secret must be at least as long as its hash (32 bytes for HS256,
    48 for HS384, 64 for HS512: RFC 7518 section 3.2), ``none`` is never an
    accepted algorithm, and the algorithms must fit the key (HS* for a secret,
    never for a public key).

    Usage::

        app = create_app(sup, scope_from_request=jwt_scope(jwks_file="jwks.json",
                                                           audience="chat-api"))

    Raises:
        JWTConfigError: an unsafe or unusable configuration: ``none`` among the
            algorithms, a secret shorter than its algorithm's hash, algorithms
            that do not fit the key (a ``ValueError``).
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
    if algorithms is not None and not list(algorithms):
        raise ValueError("algorithms must not be empty")
    allowed = list(algorithms) if algorithms else None
    _check_algorithms(allowed, kind if key_set is None else "jwks")
    if secret is not None:
        _check_secret(secret, allowed or _DEFAULT_ALGORITHMS["secret"], "secret")
    if key_set is not None:
        for jwk in key_set.keys:
            if str(jwk.key_type) == "oct":
                name = jwk.algorithm_name or "HS256"
                _check_secret(jwk.key, [*(allowed or []), name], "jwks")
    query_allowed = route_matcher(query_routes, ("GET",))
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
        token = _token(request, query_param, query_allowed=query_allowed(request))
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

    # So that the app's OpenAPI document declares the bearer scheme.
    cast(Any, scope_from_request).openapi_security = bearer_security(
        query_param=query_param, query_routes=query_routes
    )
    return scope_from_request


def _check_algorithms(allowed: list[str] | None, kind: str) -> None:
    if allowed is None:
        return
    unsigned = [a for a in allowed if a.strip().lower() == "none"]
    if unsigned:
        raise JWTConfigError(
            "algorithms",
            f"algorithm {unsigned[0]!r} is refused: 'none' accepts unsigned tokens, "
            "which anyone can forge",
        )
    known = jwt.algorithms.get_default_algorithms()
    unknown = [a for a in allowed if a not in known]
    if unknown:
        raise JWTConfigError(
            "algorithms", f"unknown JWT algorithm(s) {unknown}; known: {sorted(known)}"
        )
    hmac = [a for a in allowed if a in _HMAC_MIN_BYTES]
    if kind == "secret" and len(hmac) != len(allowed):
        others = [a for a in allowed if a not in _HMAC_MIN_BYTES]
        raise JWTConfigError(
            "algorithms", f"{', '.join(others)} verify with a public key, not a secret"
        )
    if kind == "public_key" and hmac:
        # PyJWT refuses a PEM key as an HMAC secret, but a config that asks for it is a
        # mistake (or the algorithm-confusion attack): say so at start-up.
        raise JWTConfigError(
            "algorithms",
            f"{', '.join(hmac)} verify with a shared secret, not a public key: anyone "
            "holding the public key could sign",
        )


def _check_secret(secret: str | bytes, algorithms: list[str], parameter: str) -> None:
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    need = max((_HMAC_MIN_BYTES.get(a, 0) for a in algorithms), default=0)
    if len(raw) < need:
        strongest = max(algorithms, key=lambda a: _HMAC_MIN_BYTES.get(a, 0))
        raise JWTConfigError(
            parameter,
            f"the JWT secret is {len(raw)} byte{'' if len(raw) == 1 else 's'}; {strongest} "
            f"needs at least {need} bytes "
            "(RFC 7518 section 3.2: a shorter HMAC key can be brute-forced)",
        )


def _token(request: Request, query_param: str | None, *, query_allowed: bool) -> str:
    header = request.headers.get("authorization")
    token: str | None = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationFailed(
                "InvalidToken", "the Authorization header must be 'Bearer <token>'"
            )
        token = value.strip()
    elif query_param is not None and query_allowed:
        token = request.query_params.get(query_param) or None
    if token is None:
        where = "an Authorization: Bearer header"
        if query_param is not None and query_allowed:
            where += f" or ?{query_param}="
        elif query_param is not None and query_param in request.query_params:
            where += f" (?{query_param}= is accepted only on the event streams, GET)"
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
