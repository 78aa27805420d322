#!/usr/bin/env bash
# Installs everything amqscale's benchmark and tests need on a fresh Debian/Ubuntu machine
# (run as root): apt packages, the brokers' binaries, and .venv with python-qpid-proton
# built from source against Cyrus SASL and OpenSSL, and rhea for the Node.js test peer.
# Idempotent: a second run checks and skips each step (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
PROTON_VERSION=0.40.0
STAMP=$VENV/.amqscale-setup-stamp

APT_PACKAGES=(
  build-essential pkg-config libssl-dev libsasl2-dev libsasl2-modules sasl2-bin
  libsasl2-modules-gssapi-mit python3-dev python3-venv
  libqpid-proton11-dev libqpid-proton11-dev-examples
  rabbitmq-server
  krb5-kdc krb5-admin-server krb5-user
  libhdrhistogram-java default-jre-headless
)
# Node.js may come from elsewhere (its own npm inside): only ask apt when the commands lack.
command -v node >/dev/null || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null || APT_PACKAGES+=(npm)

missing_apt() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

install_apt() {
  echo "setup: installing apt packages: $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Keep Debian from starting a system-wide RabbitMQ (and its epmd), KDC or kadmind: the tests
  # run private, loopback-only servers. policy-rc.d exiting 101 forbids service starts during
  # the install: invoke-rc.d and deb-systemd-invoke both honour it (invoke-rc.d then exits 0,
  # so the krb5 postinsts succeed). The krb5 debconf questions (default realm, the new-realm
  # note) take their defaults under noninteractive. The tests never use /etc/krb5.conf or
  # /etc/krb5kdc: amqscale.testing.kerberos writes its own realm's configuration.
  local policy=/usr/sbin/policy-rc.d created=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # Remove only the policy this run wrote; one that was there before stays.
  if [ -n "$created" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
}

mapfile -t MISSING < <(missing_apt)
if [ "${#MISSING[@]}" -gt 0 ]; then
  install_apt "${MISSING[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi

proton_ok() {
  "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import proton, sys
sys.exit(0 if proton.SASL.extended() and proton.SSL.present() else 1)
PYEOF
}

if ! proton_ok; then
  echo "setup: building python-qpid-proton $PROTON_VERSION from source (Cyrus SASL, OpenSSL)" >&2
  # --no-cache-dir: a cached wheel built without Cyrus SASL must not be reused.
  "$VENV/bin/pip" install -q --no-cache-dir --force-reinstall --no-binary python-qpid-proton \
    "python-qpid-proton==$PROTON_VERSION"
  proton_ok || { echo "setup: proton lacks Cyrus SASL or OpenSSL support" >&2; exit 1; }
fi

# The package itself (editable, builds the small C extension) and the test/bench tools.
# Skipped while the packaging files and the C sources are unchanged since the last install.
install_hash() {
  cat pyproject.toml setup.py $(find amqscale -name '*.c' | sort) 2>/dev/null | sha256sum | cut -d' ' -f1
}
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(install_hash)" ] \
   || ! "$VENV/bin/python" -c 'import amqscale' 2>/dev/null; then
  echo "setup: installing amqscale (editable) with its test, perf, bench and cluster extras" >&2
  "$VENV/bin/pip" install -q -e "$ROOT[test,perf,bench,cluster]"
  install_hash > "$STAMP"
fi
# trustme makes the test peers' TLS certificates (amqscale.testing.certs).
"$VENV/bin/python" -c 'import trustme' 2>/dev/null || "$VENV/bin/pip" install -q trustme

# rhea, the non-proton peer used by the interoperability tests (tests/peers/rhea_peer.js).
rhea_ok() {
  node -e 'process.exit(require("rhea/package.json").version === "3.0.5" ? 0 : 1)' 2>/dev/null
}
if ! (cd "$ROOT/tests/peers" && rhea_ok); then
  echo "setup: installing rhea (npm)" >&2
  (
    cd "$ROOT/tests/peers"
    if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund >/dev/null
    else npm install --silent --no-audit --no-fund >/dev/null; fi
    rhea_ok || { echo "setup: rhea 3.0.5 did not install" >&2; exit 1; }
  )
fi
echo "setup: ready" >&2
