"""One retry policy for calls to other services (the Hub, MLflow, S3): bounded, logged, typed.

``is_network_error(exc)`` decides by exception *type* (walking ``__cause__``/``__context__``,
since MLflow and boto3 wrap the transport's error in their own), never by message text:
a refused or dropped connection, a timeout, an HTTP 5xx/429 answer. A missing repo, a 404,
a refused promotion or a damaged file is not retried.

``retrying(what, attempts=..., wait=..., log=...)`` is a :class:`tenacity.Retrying` that retries
only such errors, with exponential backoff, logging each attempt; the caller turns the last
error into its own error naming the service.
"""

from __future__ import annotations

import logging
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_S3_RETRY_CODES = {"RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
                   "InternalError", "ServiceUnavailable"}


def _network_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        types += [httpx.TransportError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                  requests.exceptions.ChunkedEncodingError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions as u3

        types += [u3.ProtocolError, u3.MaxRetryError, u3.NewConnectionError, u3.TimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import botocore.exceptions as bc

        types += [bc.ConnectionError, bc.HTTPClientError, bc.IncompleteReadError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from boto3.exceptions import S3UploadFailedError

        types += [S3UploadFailedError]  # a multipart upload whose parts were dropped
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return getattr(response, "status_code", None)


def is_network_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps) is a failure to reach a service, worth retrying."""
    from onramp.errors import OnrampError

    network = _network_types()
    for _ in range(8):
        if exc is None or isinstance(exc, OnrampError):
            return False
        if isinstance(exc, network):
            return True
        code = None
        if type(exc).__name__ == "ClientError" and isinstance(getattr(exc, "response", None), dict):
            code = exc.response.get("Error", {}).get("Code")
        status = _status(exc)
        if code in _S3_RETRY_CODES or (status is not None and int(status) in _RETRY_STATUS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(what: str, *, attempts: int, wait: float, log: logging.Logger, max_wait: float = 30.0,
             retry_on: Any = is_network_error) -> Retrying:
    """A tenacity ``Retrying``: at most ``attempts`` tries of errors ``retry_on`` accepts, waiting
    ``wait``, ``2*wait``, ``4*wait``... (at most ``max_wait``) between them; the last error is re-raised."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        first = str(exc).splitlines()[0][:200] if exc is not None and str(exc) else type(exc).__name__
        log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, state.attempt_number, attempts,
                    first, state.next_action.sleep if state.next_action else 0.0)

    return Retrying(stop=stop_after_attempt(max(1, attempts)),
                    wait=wait_exponential(multiplier=wait, min=wait, max=max_wait),
                    retry=retry_if_exception(retry_on), before_sleep=before_sleep, reraise=True)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
