"""serving's errors. Each says what failed and how to fix it.

:class:`RequestError` and its kin are a client's fault and carry the HTTP status, the OpenAI
error ``type``/``code`` and the offending ``param``; the app turns them into OpenAI's error
shape. The others are operator errors (a bad engine dir, a missing backend, no keys).
"""

from __future__ import annotations

from onramp.errors import OnrampError


class ServingError(OnrampError):
    """Something about serving could not be set up."""


class EngineLoadError(ServingError):
    """An engine directory could not be loaded (missing files, bad manifest, backend failure)."""


class BackendUnavailable(ServingError):
    """The backend an engine needs is not installed here (e.g. tensorrt_llm without a GPU)."""


class AuthConfigError(ServingError):
    """API keys are missing or the keys file is unreadable."""


class RequestError(Exception):
    """A request the server refuses: status, message, and the OpenAI ``type``/``param``/``code``."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}


class ContextLengthError(RequestError):
    def __init__(self, message: str, param: str = "max_tokens"):
        super().__init__(message, param=param, code="context_length_exceeded")


class ModelNotFound(RequestError):
    status = 404

    def __init__(self, model: str, known: list[str]):
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"The model '{model}' does not exist. Served models: {names} (GET /v1/models).",
                         param="model", code="model_not_found")


class Overloaded(RequestError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, model: str, limit: int, retry_after: int = 1):
        super().__init__(
            f"Model '{model}' has {limit} requests queued or running, its limit; retry after {retry_after}s.",
            code="queue_full", headers={"Retry-After": str(retry_after)})


class Unauthorized(RequestError):
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="invalid_api_key")


class Forbidden(RequestError):
    status = 403
    type = "permission_error"

    def __init__(self, message: str):
        super().__init__(message, code="insufficient_scope")
