#!/usr/bin/env bash
# Sets up everything mlanet needs on a Debian machine with Python 3.11:
#   RabbitMQ (installed from Debian's packages when missing, started when down, with the
#   management and shovel plugins enabled), PostgreSQL (the same) and a virtual environment
#   with mlanet installed.
# Idempotent: run it as often as you like. Sourced by scripts/run and scripts/test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PYTHON="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

rabbit_answers() {
  "$PYTHON" - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5672), timeout=2) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        sys.exit(0 if s.recv(1) else 1)
except OSError:
    sys.exit(1)
PY
}

if ! command -v rabbitmq-server >/dev/null 2>&1 && ! rabbit_answers; then
  log "installing rabbitmq-server from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

# RabbitMQ's open-file limit: the default (1024) runs out with a few local federations. Each
# node has 4 + 2 per peer + 1 per contact point quorum queues, each holding a few files, and
# each connection a socket (see "Security model" in docs/OPERATIONS.md). Debian's
# rabbitmq-server wrapper runs the server through su, so PAM's limits apply: a limits.d file
# for the rabbitmq user, written before this script starts a broker. A broker that already runs
# is never restarted; its limit is only reported.
NOFILE=65536
ensure_nofile() {
  local limits="${RABBITMQ_LIMITS_FILE:-/etc/security/limits.d/rabbitmq.conf}" current
  current="$( (awk '$1 == "rabbitmq" && $3 == "nofile" { print $4 }' "$limits" 2>/dev/null || true) | tail -n 1)"
  if [ -z "$current" ] || [ "$current" -lt "$NOFILE" ] 2>/dev/null; then
    log "raising RabbitMQ's open-file limit to $NOFILE ($limits)"
    $SUDO mkdir -p "$(dirname "$limits")"
    printf 'rabbitmq - nofile %s\n' "$NOFILE" | $SUDO tee "$limits" >/dev/null
  fi
}

if ! rabbit_answers; then
  if command -v rabbitmq-server >/dev/null 2>&1; then ensure_nofile; fi
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
  for _ in $(seq 1 90); do rabbit_answers && break; sleep 1; done
fi
rabbit_answers || { log "RabbitMQ does not answer on 127.0.0.1:5672; start it with: rabbitmq-server -detached"; exit 1; }
if command -v rabbitmqctl >/dev/null 2>&1; then
  fd_limit="$($SUDO rabbitmqctl -q eval 'proplists:get_value(total_limit, file_handle_cache:info([total_limit])).' 2>/dev/null | tr -dc '0-9' || true)"
  if [ -n "$fd_limit" ] && [ "$fd_limit" -lt 10000 ]; then
    log "RabbitMQ may open only $fd_limit files (rabbitmqctl status, File Descriptors): restart it after raising its limit (docs/OPERATIONS.md); this script never restarts a running broker"
  fi
fi

# mlanet's links are RabbitMQ shovels and its status uses the management API.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  $SUDO rabbitmq-plugins enable --quiet rabbitmq_management rabbitmq_shovel rabbitmq_shovel_management >/dev/null
fi
for _ in $(seq 1 60); do
  curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null \
  || { log "the RabbitMQ management API does not answer on 127.0.0.1:15672"; exit 1; }

# The largest message RabbitMQ accepts: mlanet's size cap (256 KiB, docs/PROTOCOL.md section 4)
# plus 64 KiB for the hop records relays add. With RabbitMQ's default (128 MiB) a peer makes a
# node hold prefetch x 128 MiB. RabbitMQ 3.10 has only a global setting: set now (for new
# channels) and in the broker's config file (after a restart). See docs/OPERATIONS.md.
MAX_MESSAGE_SIZE=327680
if command -v rabbitmqctl >/dev/null 2>&1; then
  rabbit_conf="${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq.conf}"
  if ! grep -qx "max_message_size = $MAX_MESSAGE_SIZE" "$rabbit_conf" 2>/dev/null; then
    log "setting max_message_size = $MAX_MESSAGE_SIZE in $rabbit_conf"
    $SUDO mkdir -p "$(dirname "$rabbit_conf")"
    $SUDO touch "$rabbit_conf"
    $SUDO sed -i '/^[[:space:]]*max_message_size[[:space:]]*=/d' "$rabbit_conf"
    echo "max_message_size = $MAX_MESSAGE_SIZE" | $SUDO tee -a "$rabbit_conf" >/dev/null
  fi
  $SUDO rabbitmqctl -q eval "application:set_env(rabbit, max_message_size, $MAX_MESSAGE_SIZE)." \
    >/dev/null
else
  log "rabbitmqctl not found: set max_message_size = $MAX_MESSAGE_SIZE in the broker's rabbitmq.conf"
fi

# PostgreSQL: the store of a node with [database] (replicas share it), and the suite runs the
# state's tests on it too. The server on 127.0.0.1:5432 is used as it is (installed from Debian's
# packages and started when missing or down); MLANET_TEST_POSTGRES names another for the tests.
pg_answers() {
  "$PYTHON" - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5432), timeout=2):
        sys.exit(0)
except OSError:
    sys.exit(1)
PY
}
if ! pg_answers; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql from Debian's packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{ print $1 "/" $2 }'); do
    $SUDO pg_ctlcluster "${cluster%/*}" "${cluster#*/}" start || true
  done
  for _ in $(seq 1 60); do pg_answers && break; sleep 1; done
fi
pg_answers || { log "PostgreSQL does not answer on 127.0.0.1:5432; start it with: pg_ctlcluster <version> main start"; exit 1; }

# The dashboard's end-to-end test drives Debian's headless Chromium (through Playwright, which
# uses this binary; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium from Debian's packages (for the dashboard test)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  log "creating the virtual environment"
  "$PYTHON" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing mlanet and its development tools"
  .venv/bin/pip install --quiet --upgrade pip >/dev/null
  .venv/bin/pip install --quiet -e '.[dev]'
  touch .venv/.installed
fi
