"""onramp.retry decides by exception type what is worth retrying: a service that cannot be reached."""

from __future__ import annotations

import logging

import httpx
import pytest

from onramp.retry import is_network_error, retrying


def _raised_inside(outer: type[Exception], inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception:
            raise outer("wrapped")  # noqa: B904 - as MLflow does: the cause is only in __context__
    except Exception as exc:  # noqa: BLE001
        return exc


def test_network_errors_are_retryable_and_answers_are_not():
    import requests
    from botocore.exceptions import ClientError, EndpointConnectionError
    from huggingface_hub.errors import HfHubHTTPError
    from mlflow.exceptions import MlflowException

    request = httpx.Request("GET", "http://hub/x")
    assert is_network_error(httpx.ConnectError("refused", request=request))
    assert is_network_error(EndpointConnectionError(endpoint_url="http://s3"))
    assert is_network_error(HfHubHTTPError("503", response=httpx.Response(503, request=request)))
    assert not is_network_error(HfHubHTTPError("404", response=httpx.Response(404, request=request)))
    assert is_network_error(ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                                        "PutObject"))
    assert not is_network_error(ClientError({"Error": {"Code": "NoSuchBucket"},
                                             "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadBucket"))
    # MLflow wraps the transport's error in its own (raised inside the except: __context__)
    wrapped = _raised_inside(MlflowException, requests.exceptions.ConnectionError("Max retries exceeded"))
    assert is_network_error(wrapped)
    assert not is_network_error(MlflowException("RESOURCE_DOES_NOT_EXIST"))
    assert not is_network_error(ValueError("bad"))


def test_retrying_is_bounded_and_logs_each_attempt(caplog):
    caplog.set_level(logging.WARNING, logger="t")
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        for attempt in retrying("ping", attempts=3, wait=0.01, log=logging.getLogger("t")):
            with attempt:
                flaky()
    assert len(calls) == 3
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["ping failed (attempt 1/3)",
                                                                      "ping failed (attempt 2/3)"]
    calls.clear()
    with pytest.raises(KeyError):  # not a network error: not retried
        for attempt in retrying("ping", attempts=3, wait=0.01, log=logging.getLogger("t")):
            with attempt:
                calls.append(1)
                raise KeyError("x")
    assert len(calls) == 1
