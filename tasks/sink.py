"""Tracking transport: records of one MLflow run, spooled to disk and sent by a background thread."""

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from models.files import write_atomic
from models.paths import data_home
from tasks.tags import CHECKPOINTS_DIR

SPOOL = "mlflow-spool.jsonl"
MAX_BATCH = 1000                   # MLflow's log_batch limit on metrics per call
SLOW_S = 10.0                      # a call unanswered this long counts as an outage (MLflow retries inside it)


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past the flush timeout; the records are kept in the spool."""


class Spool:
    """Append-only JSONL of tracking records plus a watermark file with how many lines were sent."""

    def __init__(self, path: Path):
        self.path = path
        self.mark = path.with_name(path.name + ".sent")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:   # a torn last line from a crash mid-append: never sent, drop
                        break
        self.sent = min(int(self.mark.read_text() or 0), len(self.records)) if self.mark.is_file() else 0

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.records.append(record)

    def mark_sent(self, n: int) -> None:
        self.sent = n
        write_atomic(self.mark, str(n), fsync=False)   # a stale mark after a crash only re-sends a few records

    @property
    def pending(self) -> int:
        return len(self.records) - self.sent


class MlflowSink:
    """Sends tracking records of one run in the background: `with MlflowSink(run_id, checkpoint_dir=out) as s: ...`.

    Training never waits for the tracking server. Every record (a batch of metrics, an artifact file or a step-indexed image) is first
    appended to the spool, `<checkpoint_dir>/mlflow-spool.jsonl` (the run folder, where a resumed run looks), and
    then sent by one background thread, in order. While the server is unreachable the thread retries with backoff;
    when it is back the backlog is flushed. `close()` (or leaving the `with`) waits up to `flush_timeout_s` and
    otherwise raises TrackingUnavailable naming the spool and the last checkpoint, both on local disk. A sink opened
    later on the same folder (a resumed run) sends what the spool still holds before anything new. It uses the
    client with an explicit run id, so it needs no active run.
    """

    def __init__(self, run_id: str, *, checkpoint_dir: str | Path | None = None, flush_timeout_s: float = 300.0,
                 print_fn: Callable[[str], None] | None = print):
        self.run_id = run_id
        self.client = MlflowClient()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else data_home() / "checkpoints" / run_id
        self.last_checkpoint: Path | None = None     # the last file this sink queued under checkpoints/
        self.flush_timeout_s = flush_timeout_s
        self.say = print_fn or (lambda _msg: None)
        self.spool = Spool(self.checkpoint_dir / SPOOL)
        self.outage_since: float | None = None
        self.outages = 0
        self.last_error: BaseException | None = None
        self._cv = threading.Condition()
        self._closing = False
        self._abandoned = False
        self._send_started: float | None = None
        if self.spool.pending:
            self.say(f"mlflow: {self.spool.pending} tracking records left in {self.spool.path} by an earlier "
                     f"attempt; sending them first")
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-sink", daemon=True)
        self._thread.start()

    def __enter__(self) -> "MlflowSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error in the body, flush what we can quickly (the spool keeps the rest) and let that error through.
        if exc_type is None:
            self.close()
        else:
            self.close(timeout_s=min(30.0, self.flush_timeout_s), raise_on_timeout=False)

    # -- what training calls (never blocks on the network) -------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Any metric dict (training metrics, speed-up ratios, evaluation), queued as one record."""
        ts = int(time.time() * 1000)
        self._put({"run_id": self.run_id, "kind": "metrics", "step": int(step or 0), "ts": ts,
                   "metrics": {k: float(v) for k, v in metrics.items()}})

    def log_artifact(self, path: str | Path, artifact_dir: str | None = None) -> None:
        """A local file to upload; it must stay on disk until sent (the spool refers to it by path)."""
        path = Path(path).resolve()
        if artifact_dir == CHECKPOINTS_DIR:
            self.last_checkpoint = path
        self._put({"run_id": self.run_id, "kind": "artifact", "path": str(path), "dir": artifact_dir})

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """A PNG on disk as MLflow's step-indexed image `key` (the UI's image slider, `images/` in the run); like
        log_artifact, the file must stay on disk until sent."""
        self._put({"run_id": self.run_id, "kind": "image", "path": str(Path(path).resolve()), "key": key,
                   "step": int(step), "ts": int(time.time() * 1000)})

    # -- background sending ---------------------------------------------------------------------------------
    def _put(self, record: dict[str, Any]) -> None:
        with self._cv:
            self.spool.append(record)
            self._cv.notify()
        started = self._send_started
        if started is not None and self.outage_since is None and time.monotonic() - started > SLOW_S:
            # MLflow's client is still retrying one call (it does so for minutes by default): say so once
            self._outage(started, f"no answer for {time.monotonic() - started:.0f}s")

    def _next_batch(self) -> tuple[list[dict[str, Any]], int]:
        """Pending records to send in one call: consecutive metric records merged up to MAX_BATCH metrics."""
        recs = self.spool.records[self.spool.sent:]
        first = recs[0]
        if first["kind"] != "metrics":
            return [first], 1
        batch, n_metrics = [], 0
        for r in recs:
            if r["kind"] != "metrics" or r["run_id"] != first["run_id"] or n_metrics + len(r["metrics"]) > MAX_BATCH:
                break
            batch.append(r)
            n_metrics += len(r["metrics"])
        return batch or [first], max(len(batch), 1)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        first = batch[0]
        if first["kind"] == "metrics":
            metrics = [Metric(k, v, r["ts"], r["step"]) for r in batch for k, v in r["metrics"].items()]
            if metrics:
                self.client.log_batch(first["run_id"], metrics=metrics)
        elif first["kind"] == "image":
            if Path(first["path"]).is_file():  # a grid removed meanwhile has nothing to send
                with Image.open(first["path"]) as img:
                    img.load()
                self.client.log_image(first["run_id"], img, key=first["key"], step=first["step"],
                                      timestamp=first["ts"], synchronous=True)
        elif Path(first["path"]).is_file():   # a checkpoint removed meanwhile has nothing to send
            later = [r for r in self.spool.records[self.spool.sent + 1:]
                     if r["kind"] == "artifact" and r["path"] == first["path"]]
            if not later:                      # a checkpoint overwritten later is uploaded once, at its last record
                self.client.log_artifact(first["run_id"], first["path"], first["dir"])

    def _send_loop(self) -> None:
        delay = 0.5
        while True:
            with self._cv:
                while not self.spool.pending and not self._closing:
                    self._cv.wait()
                if not self.spool.pending or self._abandoned:
                    return
                batch, n = self._next_batch()
            self._send_started = time.monotonic()
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the store is retried, never fatal
                self.last_error = exc
                self._send_started = None
                if self.outage_since is None:
                    self._outage(time.monotonic(), f"{type(exc).__name__}: {str(exc)[:200]}")
                with self._cv:
                    self._cv.wait(timeout=delay)
                delay = min(delay * 2, 10.0)
                continue
            self._send_started = None
            with self._cv:
                if self._abandoned:             # close() gave up on us: a later sink owns the spool now
                    return
                self.spool.mark_sent(self.spool.sent + n)
            if self.outage_since is not None:
                self.say(f"mlflow: tracking store reachable again after {time.monotonic() - self.outage_since:.0f}s; "
                         f"flushing {self.spool.pending} buffered records")
                self.outage_since = None
            delay = 0.5

    def _outage(self, since: float, why: str) -> None:
        self.outage_since = since
        self.outages += 1
        self.say(f"mlflow: tracking store unreachable ({why}); training goes on, {self.spool.pending} records "
                 f"buffered in {self.spool.path}")

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record so far is sent (True) or the timeout passes (False)."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        while self.spool.pending and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return not self.spool.pending

    def close(self, timeout_s: float | None = None, *, raise_on_timeout: bool = True) -> None:
        """Flush, then stop the sender. Raises TrackingUnavailable if records are still unsent at the timeout."""
        done = self.flush(timeout_s)
        with self._cv:
            self._closing = True
            self._abandoned = not done
            self._cv.notify_all()
        if done:
            self._thread.join(timeout=30)
            return
        if raise_on_timeout:
            where = f"; the latest checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrackingUnavailable(
                f"the MLflow tracking store stayed unreachable ({type(self.last_error).__name__}: "
                f"{str(self.last_error)[:200]}); {self.spool.pending} tracking records were not sent and are kept "
                f"in {self.spool.path}{where}. They are sent when a run resumes from {self.checkpoint_dir}.")
