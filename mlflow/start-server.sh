#!/usr/bin/env bash
# Start an MLflow tracking server (UI + REST API + model registry) for this project.
#
#   bash mlflow/start-server.sh                      # server on its own SQLite store, 127.0.0.1:5000
#   bash mlflow/start-server.sh --embedded           # UI on the embedded store the pipeline writes by default
#   MLFLOW_ADMIN_PASSWORD_FILE=~/.mlflow-admin bash mlflow/start-server.sh --host 0.0.0.0   # shared, with login
#   bash mlflow/start-server.sh --auth               # login on loopback too (password as above)
#   bash mlflow/start-server.sh --backend postgresql://mlflow:PW@db:5432/mlflow --artifacts s3://bucket/mlflow
#   bash mlflow/start-server.sh --port 5001 --print  # show the command, don't run it
#
# Any address but loopback (127.x.x.x, ::1, localhost) gets MLflow's basic-auth app: users must log in. The admin's
# password comes from MLFLOW_ADMIN_PASSWORD or the file MLFLOW_ADMIN_PASSWORD_FILE (--admin-password-file), never
# from the command line, and is never printed. Without one the script refuses; --insecure serves without login.
# Defaults come from mlflow/server.env; environment variables of the same names override them, and
# flags override both. Clients then use: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "start-server.sh: error: $*" >&2; exit 2; }

# shellcheck source=server.env
source "$HERE/server.env"

EMBEDDED=0
PRINT_ONLY=0
AUTH=0
INSECURE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --embedded) EMBEDDED=1 ;;
    --backend|--backend-store-uri) [[ $# -ge 2 ]] || die "$1 needs a URI"; MLFLOW_BACKEND_STORE_URI="$2"; shift ;;
    --artifacts|--artifacts-destination) [[ $# -ge 2 ]] || die "$1 needs a path or URI"; MLFLOW_ARTIFACTS_DESTINATION="$2"; shift ;;
    --host) [[ $# -ge 2 && -n "$2" ]] || die "--host needs an address"; MLFLOW_HOST="$2"; shift ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a number"; MLFLOW_PORT="$2"; shift ;;
    --workers) [[ $# -ge 2 ]] || die "--workers needs a number"; MLFLOW_WORKERS="$2"; shift ;;
    --auth) AUTH=1 ;;
    --insecure) INSECURE=1 ;;
    --admin-password-file) [[ $# -ge 2 ]] || die "$1 needs a file"; MLFLOW_ADMIN_PASSWORD_FILE="$2"; shift ;;
    # The value is not echoed: it may be the password itself.
    --admin-password*|--password*) die "${1%%=*}: a password on the command line is visible to every user (ps);" \
                                       "set MLFLOW_ADMIN_PASSWORD or MLFLOW_ADMIN_PASSWORD_FILE instead" ;;
    --print) PRINT_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$MLFLOW_PORT" =~ ^[0-9]+$ ]] || die "--port: expected a number, got '$MLFLOW_PORT'"
[[ "$MLFLOW_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers: expected a positive number, got '$MLFLOW_WORKERS'"
[[ "$AUTH" == 1 && "$INSECURE" == 1 ]] && die "--auth and --insecure contradict each other; pass one"

LOOPBACK=0
[[ "$MLFLOW_HOST" =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|::1|localhost)$ ]] && LOOPBACK=1

# The admin password: from exactly one of these variables, never from argv.
ADMIN_PASSWORD=""
PASSWORD_SOURCE=""
sources=0
for var in MLFLOW_ADMIN_PASSWORD_FILE MLFLOW_ADMIN_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD; do
  [[ -n "${!var:-}" ]] && sources=$((sources + 1)) && PASSWORD_SOURCE="$var"
done
[[ "$sources" -le 1 ]] || die "admin password: set only one of MLFLOW_ADMIN_PASSWORD_FILE, MLFLOW_ADMIN_PASSWORD," \
                              "MLFLOW_AUTH_ADMIN_PASSWORD"
if [[ "$PASSWORD_SOURCE" == MLFLOW_ADMIN_PASSWORD_FILE ]]; then
  f="$MLFLOW_ADMIN_PASSWORD_FILE"
  [[ -f "$f" && -r "$f" ]] || die "MLFLOW_ADMIN_PASSWORD_FILE: cannot read '$f'"
  IFS= read -r ADMIN_PASSWORD < "$f" || true          # the first line; a missing final newline is fine
  ADMIN_PASSWORD="${ADMIN_PASSWORD%$'\r'}"
  mode="$(stat -c %a "$f" 2>/dev/null || echo 600)"
  [[ "${mode: -2}" == 00 ]] || echo "start-server.sh: warning: $f is readable by other users (mode $mode); chmod 600 it" >&2
  PASSWORD_SOURCE="MLFLOW_ADMIN_PASSWORD_FILE ($f)"
elif [[ -n "$PASSWORD_SOURCE" ]]; then
  ADMIN_PASSWORD="${!PASSWORD_SOURCE}"
fi

if [[ "$LOOPBACK" == 0 && "$INSECURE" == 0 ]]; then
  [[ -n "$ADMIN_PASSWORD" ]] || die "--host $MLFLOW_HOST is not loopback, so the server needs a login: set" \
      "MLFLOW_ADMIN_PASSWORD or MLFLOW_ADMIN_PASSWORD_FILE (12+ characters) for MLflow's basic-auth app," \
      "or pass --insecure to serve without one"
  AUTH=1
fi
if [[ "$AUTH" == 1 ]]; then
  [[ -n "$ADMIN_PASSWORD" ]] || die "--auth: set MLFLOW_ADMIN_PASSWORD or MLFLOW_ADMIN_PASSWORD_FILE (the admin's password)"
  # MLflow's own rules for a new admin password, checked here so the refusal is one line.
  [[ "${#ADMIN_PASSWORD}" -ge 12 ]] || die "admin password from ${PASSWORD_SOURCE%% *}: MLflow needs at least 12 characters"
  [[ "$ADMIN_PASSWORD" != password1234 ]] || die "admin password from ${PASSWORD_SOURCE%% *}: MLflow refuses its old default"
  [[ "$MLFLOW_ADMIN_USER" =~ ^[A-Za-z0-9._@-]+$ ]] || die "MLFLOW_ADMIN_USER: expected a user name, got '$MLFLOW_ADMIN_USER'"
  [[ "$MLFLOW_AUTH_DEFAULT_PERMISSION" =~ ^(READ|EDIT|MANAGE|NO_PERMISSIONS)$ ]] \
    || die "MLFLOW_AUTH_DEFAULT_PERMISSION: expected READ, EDIT, MANAGE or NO_PERMISSIONS, got '$MLFLOW_AUTH_DEFAULT_PERMISSION'"
  [[ "$MLFLOW_AUTH_CACHE_TTL_SECONDS" =~ ^[0-9]+$ ]] \
    || die "MLFLOW_AUTH_CACHE_TTL_SECONDS: expected a number of seconds, got '$MLFLOW_AUTH_CACHE_TTL_SECONDS'"
fi

if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/mlflow" ]]; then MLFLOW="$VIRTUAL_ENV/bin/mlflow"
elif [[ -x "$ROOT/.venv/bin/mlflow" ]]; then MLFLOW="$ROOT/.venv/bin/mlflow"
else MLFLOW="$(command -v mlflow || true)"; fi
[[ -n "$MLFLOW" ]] || die "mlflow not found; run 'make setup' first"
if [[ "$AUTH" == 1 && -x "$(dirname "$MLFLOW")/python" ]]; then
  "$(dirname "$MLFLOW")/python" -c "import flask_wtf" 2>/dev/null \
    || die "--auth: MLflow's basic-auth app needs mlflow[auth]; run 'make setup' (or pip install -e '.[team]')"
fi

HOME_DIR="$(mkdir -p "${TRANSSRGAN_HOME:-transsrgan-data}" && cd "${TRANSSRGAN_HOME:-transsrgan-data}" && pwd)"
if [[ "$EMBEDDED" == 1 ]]; then
  # The store tasks/tracking.py writes when MLFLOW_TRACKING_URI is unset; its experiments already
  # carry file:// artifact locations under mlartifacts/, which this server reads directly.
  ARGS=(--backend-store-uri "sqlite:///$HOME_DIR/mlflow.db"
        --default-artifact-root "file://$HOME_DIR/mlartifacts" --no-serve-artifacts)
else
  case "$MLFLOW_ARTIFACTS_DESTINATION" in
    *://*) DEST="$MLFLOW_ARTIFACTS_DESTINATION" ;;
    *) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION"; DEST="$(cd "$MLFLOW_ARTIFACTS_DESTINATION" && pwd)" ;;
  esac
  ARGS=(--serve-artifacts --artifacts-destination "$DEST")
  # A password in the store URI stays out of the process list: `mlflow server` reads the variable itself.
  if [[ "$MLFLOW_BACKEND_STORE_URI" =~ ://[^:/@]*:[^@]*@ ]]; then
    export MLFLOW_BACKEND_STORE_URI; ENV_SHOWN="MLFLOW_BACKEND_STORE_URI=$MLFLOW_BACKEND_STORE_URI "
  else
    ARGS=(--backend-store-uri "$MLFLOW_BACKEND_STORE_URI" "${ARGS[@]}")
  fi
fi
ARGS+=(--host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS")

# Never print a password: postgresql://user:secret@host -> postgresql://user:***@host
redact() { sed -E 's#(://[^:/@ ]*:)[^@ ]*@#\1***@#g'; }

# basic-auth: MLflow reads its settings from an ini file (MLFLOW_AUTH_CONFIG_PATH) and creates the admin user from
# MLFLOW_AUTH_ADMIN_PASSWORD the first time it meets an empty user database. The launcher writes that ini under the
# data home, mode 0600, without the password, and only over a file it wrote itself (first line MARK).
AUTH_DIR="$HOME_DIR/mlflow-auth"
MARK="# Written by mlflow/start-server.sh from mlflow/server.env on every start; edits here are replaced."
if [[ "$AUTH" == 1 ]]; then
  AUTH_DB="${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$AUTH_DIR/basic_auth.db}"
  if [[ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
    [[ -f "$MLFLOW_AUTH_CONFIG_PATH" && -r "$MLFLOW_AUTH_CONFIG_PATH" ]] \
      || die "MLFLOW_AUTH_CONFIG_PATH: cannot read '$MLFLOW_AUTH_CONFIG_PATH'"
    AUTH_INI="$MLFLOW_AUTH_CONFIG_PATH"
    WRITE_INI=0
    AUTH_DESC="admin and users as set in $AUTH_INI"
  else
    AUTH_INI="$AUTH_DIR/basic_auth.ini"
    WRITE_INI=1
    if [[ -L "$AUTH_INI" ]] || { [[ -e "$AUTH_INI" ]] && [[ "$(head -n 1 "$AUTH_INI")" != "$MARK" ]]; }; then
      die "$AUTH_INI was not written by this launcher; to use it, set MLFLOW_AUTH_CONFIG_PATH=$AUTH_INI, else move it away"
    fi
    AUTH_DESC="admin '$MLFLOW_ADMIN_USER', users in $(echo "$AUTH_DB" | redact), config $AUTH_INI (0600)"
  fi
  ARGS=(--app-name basic-auth "${ARGS[@]}")
fi

echo "${ENV_SHOWN:-}mlflow server ${ARGS[*]}" | redact
if [[ "$AUTH" == 1 ]]; then
  echo "login: MLflow basic-auth; admin password from $PASSWORD_SOURCE (not shown); $AUTH_DESC"
elif [[ "$LOOPBACK" == 0 ]]; then
  {
    echo "!!! WARNING (--insecure): the MLflow UI, REST API and model registry on $MLFLOW_HOST:$MLFLOW_PORT have NO LOGIN."
    echo "!!! Anyone who can reach this port can read, change and delete every run, artifact and model version."
    echo "!!! Set MLFLOW_ADMIN_PASSWORD_FILE and drop --insecure to require a login (docs/operations.md)."
  } >&2
fi
case "$MLFLOW_HOST" in 0.0.0.0|::) URL_HOST="$( (hostname -f || uname -n) 2>/dev/null || echo this-host)" ;; *:*) URL_HOST="[$MLFLOW_HOST]" ;; *) URL_HOST="$MLFLOW_HOST" ;; esac
URL="http://$URL_HOST:$MLFLOW_PORT"
echo "UI and API: $URL  (clients: export MLFLOW_TRACKING_URI=$URL$(
  [[ "$AUTH" == 1 ]] && echo " MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=..."))"
[[ "$PRINT_ONLY" == 1 ]] && exit 0

if [[ "$AUTH" == 1 ]]; then
  mkdir -p -m 700 "$AUTH_DIR"
  if [[ "$WRITE_INI" == 1 ]]; then
    tmp="$(mktemp "$AUTH_DIR/.basic_auth.ini.XXXXXX")"          # mode 0600 from the start
    {
      echo "$MARK"
      echo "# To keep settings of your own, copy it elsewhere and set MLFLOW_AUTH_CONFIG_PATH to the copy."
      echo "# No password here: the launcher hands the admin's to MLflow in MLFLOW_AUTH_ADMIN_PASSWORD."
      echo "[mlflow]"
      echo "default_permission = $MLFLOW_AUTH_DEFAULT_PERMISSION"
      echo "database_uri = $AUTH_DB"
      echo "admin_username = $MLFLOW_ADMIN_USER"
      echo "auth_cache_ttl_seconds = $MLFLOW_AUTH_CACHE_TTL_SECONDS"
      echo "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
    } > "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$AUTH_INI"
  fi
  # Flask signs its session and CSRF tokens with this key; it must stay the same across restarts and workers.
  if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
    KEY_FILE="$AUTH_DIR/flask_secret_key"
    if [[ ! -s "$KEY_FILE" ]]; then
      tmp="$(mktemp "$AUTH_DIR/.flask_secret_key.XXXXXX")"
      od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$tmp"
      mv -n "$tmp" "$KEY_FILE"; rm -f "$tmp"
    fi
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$KEY_FILE")"
  fi
  export MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI" MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_ADMIN_PASSWORD="$ADMIN_PASSWORD"
  unset MLFLOW_ADMIN_PASSWORD ADMIN_PASSWORD
fi
exec "$MLFLOW" server "${ARGS[@]}"
