"""``python -m sessionvisor ... --jwt-secret-file F`` (and the other key options)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from sessionvisor.__main__ import main

from .test_cli import free_port, run_cli, stop

SECRET = "the-demo-secret-of-a-sensible-length-1234"


def token(sub: str, **extra: object) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "exp": now + 300, "aud": "chat", **extra}, SECRET, algorithm="HS256"
    )


def test_the_demo_with_a_jwt_secret_file_verifies_tokens(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")  # a trailing newline is not part of the secret
    port = free_port()
    args = ("demo", "--port", str(port), "--db", str(tmp_path / "demo.db"))
    with run_cli(
        *args, "--jwt-secret-file", str(secret), "--jwt-audience", "chat", cwd=tmp_path
    ) as (
        proc,
        _banner,
    ):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            body = {"content": "hello"}
            missing = client.post("/conversations/c-1/messages", json=body, headers={"X-User": "a"})
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = client.post(
                "/conversations/c-1/messages",
                json=body,
                headers={"Authorization": f"Bearer {token('alice', aud='other')}"},
            )
            assert wrong.json()["error"] == "InvalidAudience"
            alice = {"Authorization": f"Bearer {token('alice')}"}
            assert (
                client.post("/conversations/c-1/messages", json=body, headers=alice).status_code
                == 202
            )
            bob = {"Authorization": f"Bearer {token('bob')}"}
            assert client.get("/conversations/c-1", headers=bob).status_code == 404
            assert client.get("/conversations/c-1", headers=alice).status_code == 200
        stop(proc, signal.SIGINT)


def test_unreadable_key_files_and_mixed_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "demo.db")
    assert main(["demo", "--db", db, "--jwt-jwks-file", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the JWKS file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--jwt-secret-file", "a", "--jwt-public-key-file", "b"])
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    (tmp_path / "jwt_cli_routes.py").write_text("def router(scope, cid, opts):\n    return None\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code = main(["serve", "jwt_cli_routes:router", "--scope", "jwt_cli_routes:router",
                     "--jwt-secret-file", str(secret)])  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 2
    assert "exclude each other" in capsys.readouterr().err
