"""Run logging: every onboarding is an MLflow run with params, metrics, tags, reports and plots.

:meth:`Runs.start` creates a run and returns a :class:`RunHandle` bound to it; ``with
runs.run(...)`` ends it FINISHED, or FAILED on an exception. Files go to the run's artifacts
through the :class:`~registry.store.ArtifactStore` (its transfer policy); params, metrics and
tags are tracking calls (:mod:`registry.tracking`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from registry.store import ArtifactStore
    from registry.tracking import Tracking

__all__ = ["RunHandle", "Runs"]


class RunHandle:
    """Logging helpers bound to one MLflow run (params, metrics, tags, files, dicts, text, figures)."""

    def __init__(self, tracking: Tracking, store: ArtifactStore, run_id: str, artifact_uri: str | None = None):
        self.tracking = tracking
        self.store = store
        self.run_id = run_id
        self._artifact_uri = artifact_uri

    @property
    def client(self) -> MlflowClient:
        return self.tracking.client

    @property
    def artifact_uri(self) -> str:
        if self._artifact_uri is None:
            self._artifact_uri = self.tracking.artifact_uri(self.run_id)
        return self._artifact_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
        if items:
            self.tracking.call(lambda: self.client.log_batch(self.run_id, params=items))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.tracking.call(lambda: self.client.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.tracking.call(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or the files of a directory (recursively, under ``artifact_path``)."""
        path = Path(path)
        if path.is_dir():
            self.store.put_dir(self.artifact_uri, path, artifact_path or "")
        else:
            self.store.put_file(self.artifact_uri, path, artifact_path)

    def _log_file(self, artifact_file: str, write: Any) -> None:
        rel = Path(artifact_file)
        with tempfile.TemporaryDirectory(prefix="onramp-artifact-") as tmp:
            local = Path(tmp) / rel.name
            write(local)
            self.store.put_file(self.artifact_uri, local, rel.parent.as_posix() if rel.parent.parts else None)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        """JSON for a ``.json`` file, YAML otherwise (as MLflow's ``log_dict``)."""
        if artifact_file.endswith(".json"):
            self._log_file(artifact_file, lambda p: p.write_text(json.dumps(data, indent=2)))
        else:
            import yaml

            self._log_file(artifact_file, lambda p: p.write_text(yaml.safe_dump(data, sort_keys=False)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda p: p.write_text(text, encoding="utf-8"))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure (e.g. a latency plot) as an image artifact."""
        self._log_file(artifact_file, lambda p: figure.savefig(p))

    def end(self, status: str = "FINISHED") -> None:
        self.tracking.call(lambda: self.client.set_terminated(self.run_id, status))


class Runs:
    """Creates runs in the registry's experiment."""

    def __init__(self, tracking: Tracking, store: ArtifactStore):
        self.tracking = tracking
        self.store = store

    def start(self, run_name: str | None = None, *, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None, parent_run_id: str | None = None) -> RunHandle:
        """Create a run (e.g. one onboarding, or one engine build under it) and return its handle."""
        all_tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        experiment = self.tracking.experiment_id()
        run = self.tracking.call(lambda: self.tracking.client.create_run(experiment, tags=all_tags,
                                                                         run_name=run_name))
        handle = RunHandle(self.tracking, self.store, run.info.run_id, run.info.artifact_uri)
        if params:
            handle.log_params(params)
        return handle

    @contextlib.contextmanager
    def run(self, run_name: str | None = None, **kwargs: Any) -> Iterator[RunHandle]:
        """``with runs.run("onboard ...") as run:`` — FINISHED on exit, FAILED on an exception."""
        handle = self.start(run_name, **kwargs)
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):
                handle.end("FAILED")
            raise
        handle.end("FINISHED")
