"""``python -m sessionvisor ... --jwt-secret-file F`` (and the other key options)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from sessionvisor.__main__ import main
from sessionvisor.testing import free_port

from ._cli import REPO, run_cli, stop

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


def run_to_exit(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its exit; a server that starts instead of refusing times out."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sessionvisor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--jwt-audience", "chat-api"], ["--jwt-audience"]),
        (["--jwt-issuer", "https://auth", "--jwt-algorithm", "RS256"],
         ["--jwt-issuer", "--jwt-algorithm"]),
        (["--jwt-owner-claim", "email", "--jwt-leeway", "5"],
         ["--jwt-leeway", "--jwt-owner-claim"]),
        (["--jwt-secret-file", "short"], ["--jwt-secret-file", "32 bytes"]),
        (["--jwt-secret-file", "long", "--jwt-algorithm", "HS512"],
         ["--jwt-secret-file", "64 bytes"]),
        (["--jwt-secret-file", "long", "--jwt-algorithm", "none"], ["--jwt-algorithm", "'none'"]),
        (["--jwt-secret-file", "long", "--jwt-algorithm", "NoNe"], ["--jwt-algorithm", "'NoNe'"]),
        (["--jwt-public-key-file", "long", "--jwt-algorithm", "HS256"], ["--jwt-algorithm"]),
    ],
    ids=["audience-without-key", "issuer-and-algorithm-without-key", "leeway-and-claim-without-key",
         "1-byte-secret", "hs512-with-41-bytes", "none", "mixed-case-none", "public-key-as-hmac"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_unsafe_jwt_options_refuse_to_start(
    tmp_path: Path, command: str, options: list[str], named: list[str]
) -> None:
    (tmp_path / "short").write_text("x\n")
    (tmp_path / "long").write_text(SECRET + "\n")
    (tmp_path / "unsafe_routes.py").write_text("def router(scope, cid, opts):\n    return None\n")
    where = ["serve", "unsafe_routes:router", "--store", "memory"] if command == "serve" else [
        "demo", "--store", "memory"]  # fmt: skip
    done = run_to_exit([*where, "--port", "0", *options], cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    for text in named:
        assert text in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert "open http://" not in done.stdout
