"""The Hub client onramp uses: resolve a revision to a sha, pull a pinned snapshot.

Every call passes the endpoint explicitly (``settings.hf_endpoint``; ``None`` means the
public Hub), because huggingface_hub reads ``HF_ENDPOINT`` once at import time. Only
safetensors weights and the files a tokenizer and config need are downloaded; a repository
with pickled weights only is refused, and remote code is never fetched nor trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from onramp.errors import OnrampError
from onramp.retry import is_network_error, retrying

log = logging.getLogger(__name__)
PULL_ATTEMPTS = 4       # tries of a pull while the Hub cannot be reached (then HubUnavailableError)
PULL_RETRY_WAIT = 2.0   # seconds before the second try, doubling after

ALLOW_PATTERNS = [
    "*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja", "*.md",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class HubError(OnrampError):
    """The Hub (or mirror) could not be reached or does not have what was asked for."""


class HubUnavailableError(HubError):
    """The Hub (or mirror) could not be reached, answered 5xx, or dropped a download."""


def _hub_error(exc: Exception, repo_id: str, revision: str, endpoint: str | None) -> HubError:
    where = endpoint or "the public Hub"
    name = type(exc).__name__
    if name in {"RepositoryNotFoundError", "GatedRepoError"}:
        return HubError(f"repository {repo_id} not found on {where}", "check the repo id and HF_ENDPOINT / HF_TOKEN")
    if name == "RevisionNotFoundError":
        return HubError(f"revision {revision!r} of {repo_id} not found on {where}", "check --revision")
    cls = HubUnavailableError if is_network_error(exc) else HubError
    first = (str(exc).splitlines() or [""])[0][:200]
    return cls(f"cannot reach {where} for {repo_id}@{revision}: {name}: {first}",
               "check HF_ENDPOINT (onramp mirror serve for a loopback mirror) and the network")


def resolve_revision(repo_id: str, revision: str = "main", endpoint: str | None = None) -> str:
    """Return the commit sha that ``revision`` (a branch, tag or sha) of ``repo_id`` points to."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except Exception as exc:  # huggingface_hub raises many types; map them to one line
        raise _hub_error(exc, repo_id, revision, endpoint) from None
    return info.sha


def check_weights_are_safetensors(files: list[str], repo_id: str) -> None:
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise HubError(
            f"{repo_id} has only pickled weights ({', '.join(sorted(pickled)[:3])}); onramp loads safetensors only",
            "convert the checkpoint to safetensors (e.g. the Hub's convert space) and publish that revision",
        )
    raise HubError(f"{repo_id} has no *.safetensors weights", "publish the weights as safetensors")


def revision_date(repo_id: str, sha: str, endpoint: str | None = None) -> str | None:
    """The date of commit ``sha`` (ISO 8601, UTC) as the Hub reports it, or None; what orders two
    revisions of a repo (a later commit is the newer revision)."""
    from huggingface_hub import HfApi

    def ask() -> str | None:
        try:
            info = HfApi(endpoint=endpoint).model_info(repo_id, revision=sha)
        except Exception as exc:
            raise _hub_error(exc, repo_id, sha, endpoint) from None
        return info.last_modified.isoformat() if info.last_modified else None

    return _retried(f"asking {endpoint or 'the Hub'} for {repo_id}@{sha[:12]}", ask, PULL_ATTEMPTS, PULL_RETRY_WAIT)


def _retried(what: str, fn, attempts: int, wait: float):
    try:
        for attempt in retrying(what, attempts=attempts, wait=wait, log=log,
                                retry_on=lambda e: isinstance(e, HubUnavailableError)):
            with attempt:
                return fn()
    except HubUnavailableError as exc:
        raise HubUnavailableError(f"{exc.what} (after {attempts} attempts)", exc.fix) from None


def pull(repo_id: str, revision: str = "main", *, endpoint: str | None = None,
         cache_dir: Path | None = None, token: str | None = None, attempts: int = PULL_ATTEMPTS,
         retry_wait: float = PULL_RETRY_WAIT) -> tuple[Path, str]:
    """Download a pinned snapshot of ``repo_id``; return ``(local_dir, sha)``.

    The revision is resolved to a sha first, and the snapshot is fetched at that sha, so the
    files on disk are exactly that commit even if the branch moves meanwhile. While the Hub
    cannot be reached (refused, 5xx, a download cut off) the pull is tried again, ``attempts``
    times in all with a doubling wait; huggingface_hub resumes the files it had started. Then
    :class:`HubUnavailableError` names the endpoint.
    """
    return _retried(f"pull of {repo_id}@{revision} from {endpoint or 'the Hub'}",
                    lambda: _pull_once(repo_id, revision, endpoint, cache_dir, token), attempts, retry_wait)


def _pull_once(repo_id: str, revision: str, endpoint: str | None, cache_dir: Path | None,
               token: str | None) -> tuple[Path, str]:
    from huggingface_hub import HfApi, snapshot_download

    sha = resolve_revision(repo_id, revision, endpoint)
    try:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=sha)
    except Exception as exc:
        raise _hub_error(exc, repo_id, sha, endpoint) from None
    check_weights_are_safetensors(files, repo_id)
    try:
        path = snapshot_download(repo_id, revision=sha, endpoint=endpoint, cache_dir=cache_dir,
                                 allow_patterns=ALLOW_PATTERNS, token=token)
    except Exception as exc:
        raise _hub_error(exc, repo_id, sha, endpoint) from None
    return Path(path), sha
