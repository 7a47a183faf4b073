"""The Hub client onramp uses: resolve a revision to a sha, pull a pinned snapshot.

Every call passes the endpoint explicitly (``settings.hf_endpoint``; ``None`` means the
public Hub), because huggingface_hub reads ``HF_ENDPOINT`` once at import time. Only
safetensors weights and the files a tokenizer and config need are downloaded; a repository
with pickled weights only is refused, and remote code is never fetched nor trusted (``auto_map``
in config.json or tokenizer_config.json is refused before any weight is downloaded).

Pulls are bounded: at most ``hub_max_files`` files and ``hub_max_download_gb`` GB, checked
against the Hub's listing before the download and against the files on disk after it; every
HTTP call times out after ``hub_timeout_s`` seconds without an answer (settings, ``ONRAMP_HUB_*``).
"""

from __future__ import annotations

import json
import logging
import threading
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
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")  # where transformers finds auto_map


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


_timeout_lock = threading.Lock()
_timeout_in_use: list[float | None] = [None]


def _settings(settings=None):
    if settings is None:
        from onramp.settings import load_settings

        settings = load_settings()
    return settings


def use_timeout(seconds: float) -> None:
    """Make every HTTP call of huggingface_hub in this process time out after ``seconds`` without
    an answer (connect, and each read: a stalled download fails too). Its default is no timeout."""
    with _timeout_lock:
        if _timeout_in_use[0] == seconds:
            return
        import httpx
        from huggingface_hub import get_session, set_client_factory
        from huggingface_hub.utils._http import default_client_factory

        def factory() -> httpx.Client:
            client = default_client_factory()
            client.timeout = httpx.Timeout(seconds)
            return client

        set_client_factory(factory)  # clients made from now on
        get_session().timeout = httpx.Timeout(seconds)  # and the shared one (not closed: it may be in use)
        _timeout_in_use[0] = seconds


def resolve_revision(repo_id: str, revision: str = "main", endpoint: str | None = None, *,
                     timeout: float | None = None) -> str:
    """Return the commit sha that ``revision`` (a branch, tag or sha) of ``repo_id`` points to.
    ``timeout``: seconds (default: the ``hub_timeout_s`` setting)."""
    from huggingface_hub import HfApi

    timeout = timeout or _settings().hub_timeout_s
    use_timeout(timeout)
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=timeout)
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


def check_pull_size(sizes: dict[str, int | None], repo_id: str, *, max_bytes: int, max_files: int) -> None:
    """Refuse a pull of more than ``max_files`` files or ``max_bytes`` bytes (unknown sizes count 0
    here; the files on disk are checked again after the download)."""
    if len(sizes) > max_files:
        raise HubError(f"{repo_id} has {len(sizes)} files to download, more than the limit of {max_files}",
                       "raise hub_max_files (ONRAMP_HUB_MAX_FILES) if this repository is trusted")
    total = sum(size or 0 for size in sizes.values())
    if total > max_bytes:
        raise HubError(f"{repo_id} has {total / 1e9:.3f} GB to download, more than the limit of "
                       f"{max_bytes / 1e9:g} GB", "raise hub_max_download_gb (ONRAMP_HUB_MAX_DOWNLOAD_GB) "
                       "if this repository is trusted and the disk has room")


def check_no_remote_code(checkpoint: Path, repo_id: str) -> None:
    """Refuse a checkpoint whose config.json or tokenizer_config.json asks for remote code (auto_map)."""
    for name in REMOTE_CODE_FILES:
        path = Path(checkpoint) / name
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise HubError(f"{name} of {repo_id} is not valid JSON", "fix the file on the Hub") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise HubError(f"{name} of {repo_id} asks for remote code (auto_map); onramp never runs code "
                           "from a checkpoint", "publish the model with transformers' own classes (no auto_map)")


def _listing(repo_id: str, sha: str, endpoint: str | None, token: str | None) -> dict[str, int | None]:
    """``{path: size}`` of the files at ``sha`` (sizes as the Hub lists them)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        tree = HfApi(endpoint=endpoint, token=token).list_repo_tree(repo_id, revision=sha, recursive=True)
        return {item.path: item.size for item in tree if isinstance(item, RepoFile)}
    except Exception as exc:
        raise _hub_error(exc, repo_id, sha, endpoint) from None


def _disk_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())  # follows the cache's symlinks


def revision_date(repo_id: str, sha: str, endpoint: str | None = None) -> str | None:
    """The date of commit ``sha`` (ISO 8601, UTC) as the Hub reports it, or None; what orders two
    revisions of a repo (a later commit is the newer revision)."""
    from huggingface_hub import HfApi

    timeout = _settings().hub_timeout_s
    use_timeout(timeout)

    def ask() -> str | None:
        try:
            info = HfApi(endpoint=endpoint).model_info(repo_id, revision=sha, timeout=timeout)
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
         cache_dir: Path | None = None, token: str | None = None, settings=None,
         attempts: int = PULL_ATTEMPTS, retry_wait: float = PULL_RETRY_WAIT) -> tuple[Path, str]:
    """Download a pinned snapshot of ``repo_id``; return ``(local_dir, sha)``.

    The revision is resolved to a sha first, and the snapshot is fetched at that sha, so the
    files on disk are exactly that commit even if the branch moves meanwhile. Limits and the
    timeout come from ``settings`` (default: :func:`onramp.settings.load_settings`). While the
    Hub cannot be reached (refused, 5xx, a download cut off or stalled) the pull is tried again,
    ``attempts`` times in all with a doubling wait; huggingface_hub resumes the files it had
    started. Then :class:`HubUnavailableError` names the endpoint.
    """
    return _retried(f"pull of {repo_id}@{revision} from {endpoint or 'the Hub'}",
                    lambda: _pull_once(repo_id, revision, endpoint, cache_dir, token, settings),
                    attempts, retry_wait)


def _pull_once(repo_id: str, revision: str, endpoint: str | None, cache_dir: Path | None, token: str | None,
               settings) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    settings = _settings(settings)
    max_bytes, max_files = int(settings.hub_max_download_gb * 1e9), settings.hub_max_files
    timeout = settings.hub_timeout_s
    sha = resolve_revision(repo_id, revision, endpoint, timeout=timeout)
    listed = _listing(repo_id, sha, endpoint, token)
    check_weights_are_safetensors(list(listed), repo_id)
    wanted = set(filter_repo_objects(list(listed), allow_patterns=ALLOW_PATTERNS))
    check_pull_size({f: listed[f] for f in wanted}, repo_id, max_bytes=max_bytes, max_files=max_files)

    def download(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo_id, revision=sha, endpoint=endpoint, cache_dir=cache_dir,
                                          allow_patterns=patterns, token=token, etag_timeout=timeout))
        except Exception as exc:
            raise _hub_error(exc, repo_id, sha, endpoint) from None

    small = [f for f in REMOTE_CODE_FILES if f in wanted]
    if small:  # the configs first: a repo asking for remote code is refused before any weight comes
        check_no_remote_code(download(small), repo_id)
    path = download(ALLOW_PATTERNS)
    check_no_remote_code(path, repo_id)
    on_disk = _disk_size(path)
    if on_disk > max_bytes:
        raise HubError(f"{repo_id}@{sha[:12]} downloaded {on_disk / 1e9:.3f} GB, more than its listing said and "
                       f"the limit of {max_bytes / 1e9:g} GB", "raise hub_max_download_gb (ONRAMP_HUB_MAX_DOWNLOAD_GB) "
                       "if this repository is trusted")
    return path, sha
