"""Which Prefect API a CLI run talks to: the server at PREFECT_API_URL, or a temporary local one."""

import contextlib
from collections.abc import Iterator

import httpx
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from flows.errors import UsageError

EPHEMERAL_STARTUP_S = 120   # Prefect's default (20 s) is too short on a busy 2-core machine with a fresh DB


def check_server(url: str, timeout_s: float = 5.0) -> None:
    """Fail early, in one line, when PREFECT_API_URL points at a server that is not running."""
    try:
        ok = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        raise UsageError(f"PREFECT_API_URL={url} is not reachable: start it with `prefect server start`, or unset "
                         "PREFECT_API_URL to run on a temporary local Prefect server")


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yields a one-line description of the API in use.

    With no PREFECT_API_URL (env or profile), Prefect 3 starts a temporary server in a subprocess for the
    duration of the run (ephemeral mode), on the SQLite database in PREFECT_HOME; we enable that mode even if
    a profile disabled it and give it time to start. Runs recorded that way show up later in `prefect server
    start`'s UI, which reads the same database.
    """
    url = PREFECT_API_URL.value()
    if url:
        check_server(url)
        yield f"Prefect server at {url}"
        return
    # The temporary server inherits these settings; its telemetry heartbeat only adds SQLite lock contention
    # (and there is nobody to send it to offline).
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True,
                                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_S,
                                     PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        db = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        yield (f"a temporary local Prefect server (PREFECT_API_URL is not set; runs are stored in {db} and "
               "show in the UI of `prefect server start`)")
