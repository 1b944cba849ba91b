#!/usr/bin/env bash
# Start an MLflow tracking server (UI + REST API + model registry) for this project.
#
#   bash mlflow/start-server.sh                      # server on its own SQLite store, 127.0.0.1:5000
#   bash mlflow/start-server.sh --embedded           # UI on the embedded store the pipeline writes by default
#   bash mlflow/start-server.sh --backend postgresql://mlflow:PW@db:5432/mlflow --artifacts s3://bucket/mlflow
#   bash mlflow/start-server.sh --port 5001 --print  # show the command, don't run it
#
# Defaults come from mlflow/server.env; environment variables of the same names override them, and
# flags override both. Clients then use: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "start-server.sh: error: $*" >&2; exit 2; }

# shellcheck source=server.env
source "$HERE/server.env"

EMBEDDED=0
PRINT_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --embedded) EMBEDDED=1 ;;
    --backend|--backend-store-uri) [[ $# -ge 2 ]] || die "$1 needs a URI"; MLFLOW_BACKEND_STORE_URI="$2"; shift ;;
    --artifacts|--artifacts-destination) [[ $# -ge 2 ]] || die "$1 needs a path or URI"; MLFLOW_ARTIFACTS_DESTINATION="$2"; shift ;;
    --host) [[ $# -ge 2 ]] || die "--host needs an address"; MLFLOW_HOST="$2"; shift ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a number"; MLFLOW_PORT="$2"; shift ;;
    --workers) [[ $# -ge 2 ]] || die "--workers needs a number"; MLFLOW_WORKERS="$2"; shift ;;
    --print) PRINT_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$MLFLOW_PORT" =~ ^[0-9]+$ ]] || die "--port: expected a number, got '$MLFLOW_PORT'"

if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/mlflow" ]]; then MLFLOW="$VIRTUAL_ENV/bin/mlflow"
elif [[ -x "$ROOT/.venv/bin/mlflow" ]]; then MLFLOW="$ROOT/.venv/bin/mlflow"
else MLFLOW="$(command -v mlflow || true)"; fi
[[ -n "$MLFLOW" ]] || die "mlflow not found; run 'make setup' first"

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
  ARGS=(--backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --serve-artifacts --artifacts-destination "$DEST")
fi
ARGS+=(--host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS")

# Never print a password: postgresql://user:secret@host -> postgresql://user:***@host
redact() { sed -E 's#(://[^:/@ ]*:)[^@ ]*@#\1***@#g'; }
echo "mlflow server ${ARGS[*]}" | redact
echo "UI and API: http://$MLFLOW_HOST:$MLFLOW_PORT  (clients: export MLFLOW_TRACKING_URI=http://$MLFLOW_HOST:$MLFLOW_PORT)"
[[ "$PRINT_ONLY" == 1 ]] && exit 0
exec "$MLFLOW" server "${ARGS[@]}"
