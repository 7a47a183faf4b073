"""The connection to MLflow: one explicit client, the experiment, and one error for a server that is down.

:class:`Tracking` wraps an explicit :class:`mlflow.MlflowClient` (never MLflow's global "active
run" state, so flows, threads and the server can share it). Tracking and registry calls (runs,
tags, versions, aliases) are *not* retried here: MLflow's own bounded HTTP retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, kept small below) are their one retry layer, and
:meth:`Tracking.call` turns a server that stays unreachable into one
:class:`~registry.errors.RegistryUnavailableError` naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from onramp.retry import first_line, is_network_error
from registry.errors import RegistryUnavailableError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

__all__ = ["Tracking"]

T = TypeVar("T")


class Tracking:
    """MLflow tracking + model registry at ``tracking_uri``; runs go to ``experiment``, whose
    artifacts live at ``artifact_root`` (None: the tracking server decides)."""

    def __init__(self, tracking_uri: str, artifact_root: str | None, experiment: str = "onramp"):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment_name = experiment
        if self.remote:
            # MLflow's own HTTP retries are the one retry layer of tracking calls: keep them bounded
            # (its default is 7 retries with a doubling backoff, minutes against a server that is down)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    @property
    def remote(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @property
    def client(self) -> MlflowClient:
        """The raw MLflow client (created on first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            if self.artifact_root and "://" not in self.artifact_root:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def call(self, fn: Callable[[], T]) -> T:
        """Run a tracking/registry call; a server that cannot be reached (after MLflow's own
        bounded HTTP retries) becomes one :class:`RegistryUnavailableError` naming it."""
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if is_network_error(exc):
                raise self.unavailable(exc) from None
            raise

    def unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"MLflow tracking server {self.tracking_uri} is unreachable: {first_line(exc, 200)}",
            "start it (`mlflow server ...` or `onramp up`) or fix ONRAMP_MLFLOW_TRACKING_URI, then run again",
        )

    def artifact_uri(self, run_id: str) -> str:
        """Where a run's artifacts are stored (``s3://...``, a local path, ``mlflow-artifacts:/...``)."""
        return self.call(lambda: self.client.get_run(run_id).info.artifact_uri)

    def experiment_id(self) -> str:
        """The experiment holding onramp's runs, created with the configured artifact root.

        MLflow fixes an experiment's artifact location when it is created. If the experiment
        exists with another location (e.g. the root moved from the embedded default to S3),
        the runs go to a sibling experiment named ``"<experiment> @ <root>"`` instead, so engine
        files always land where ONRAMP_MLFLOW_ARTIFACT_ROOT says.
        """
        if self._experiment_id is None:
            exp = self.call(lambda: self.client.get_experiment_by_name(self.experiment_name))
            if exp is not None and self.artifact_root and \
                    exp.artifact_location.rstrip("/") != self.artifact_root.rstrip("/"):
                sibling = f"{self.experiment_name} @ {self.artifact_root}"
                log.info("experiment %r keeps its artifacts at %s; using %r for %s",
                         self.experiment_name, exp.artifact_location, sibling, self.artifact_root)
                self.experiment_name = sibling
                exp = self.client.get_experiment_by_name(sibling)
            self._experiment_id = exp.experiment_id if exp is not None else self._create_experiment()
        return self._experiment_id

    def _create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_root)
        except MlflowException:  # created concurrently
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id
