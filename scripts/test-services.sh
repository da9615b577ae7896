#!/usr/bin/env bash
# Makes the servers the test suite talks to available. In CI (CI=true) it
# installs and starts what is missing, because a skipped test there would hide
# a failure; on a laptop it only reports what is absent, and the tests that need
# it skip with that reason.
set -u
in_ci=${CI:-}
have_port() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq >/dev/null; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ -z "$in_ci" ]; then
  have_port 5432 || echo "note: no PostgreSQL on 127.0.0.1:5432; Postgres tests will skip"
  have_port 6379 || echo "note: no Redis on 127.0.0.1:6379; Redis tests will skip"
  command -v redis-server >/dev/null || echo "note: no redis-server binary; cluster tests will skip"
  command -v chromium >/dev/null || echo "note: no chromium; browser tests will skip"
  exit 0
fi

if ! have_port 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
# The binary is needed even when a Redis already listens: tests/cluster start
# (and restart) redis-server processes of their own on free ports.
command -v redis-server >/dev/null || apt_install redis-server
if ! have_port 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! command -v chromium >/dev/null; then
  apt_install chromium
fi
for _ in $(seq 1 50); do have_port 5432 && have_port 6379 && break; sleep 0.2; done
exit 0
