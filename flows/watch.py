"""The watcher: poll the Hub for new revisions of watched repos and orgs, emit one event each.

The logic is a plain function, :func:`find_new_revisions` (Hub calls with explicit
revisions, ``list_models(author=...)`` for orgs); the flow :func:`watch` runs it on a
schedule and emits a Prefect event ``onramp.model.revision`` per new revision. The
``onboard`` deployment has a trigger on that event (see ``flows/deploy.py``); the webhook
(``flows/webhook.py``) emits the same event when the Hub pushes instead of being polled.

Which shas have been seen is kept in ``$ONRAMP_HOME/watch/seen.json`` (``{repo: sha}``). A repo
seen for the first time counts as new: adding it to the watch list onboards its current head.
The onboard flow marks what it onboarded as seen, so a revision onboarded by hand is not
onboarded again by the watcher.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock
from prefect import flow, get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.errors import WatchError
from flows.events import Revision, emit_revision_event
from onramp.files import write_text_atomic
from onramp.settings import Settings

__all__ = ["BRANCH", "WatchList", "state_path", "load_seen", "mark_seen", "hub_org_lister", "mirror_org_lister",
           "find_new_revisions", "poll_hub", "emit_revision", "watch"]

log = logging.getLogger(__name__)

BRANCH = "main"


class WatchList(BaseModel):
    """What to watch: repo ids (``ORG/NAME``) and orgs/authors (every model of theirs)."""

    model_config = ConfigDict(extra="forbid")

    repos: list[str] = Field(default_factory=list)
    orgs: list[str] = Field(default_factory=list)

    @field_validator("repos")
    @classmethod
    def _repo_ids(cls, repos: list[str]) -> list[str]:
        for repo in repos:
            parts = repo.split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"watch_repos entry {repo!r} is not ORG/NAME")
        return repos

    @field_validator("orgs")
    @classmethod
    def _org_names(cls, orgs: list[str]) -> list[str]:
        for org in orgs:
            if not org or "/" in org:
                raise ValueError(f"watch_orgs entry {org!r} is not an org or user name")
        return orgs

    def covers(self, repo: str) -> bool:
        """Is ``repo`` on the watch list: one of ``repos``, or a model of one of ``orgs``?
        Compared case-insensitively, as the Hub compares repo ids."""
        repo = repo.lower()
        org, sep, _ = repo.partition("/")
        return repo in {r.lower() for r in self.repos} or (bool(sep) and org in {o.lower() for o in self.orgs})

    @classmethod
    def from_settings(cls, settings: Settings) -> WatchList:
        try:
            return cls(repos=settings.watch_repos, orgs=settings.watch_orgs)
        except ValueError as exc:
            msg = str(exc).splitlines()
            raise WatchError(f"bad watch list: {msg[2].strip() if len(msg) > 2 else msg[0]}",
                             "set watch_repos to ORG/NAME ids and watch_orgs to org names "
                             "(config file or ONRAMP_WATCH_REPOS / ONRAMP_WATCH_ORGS, comma-separated)") from None


# ------------------------------------------------------------------------------ seen state

def state_path(settings: Settings) -> Path:
    return settings.home / "watch" / "seen.json"


def load_seen(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WatchError(f"cannot read the watcher's state {path}: {exc}",
                         "delete it (watched repos are then onboarded again, reusing finished builds)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise WatchError(f"the watcher's state {path} is not a {{repo: sha}} object", "delete the file")
    return data


def mark_seen(path: Path, repo: str, sha: str) -> None:
    """Record ``repo``'s ``sha`` as seen (atomic write under a lock; safe across processes)."""
    with FileLock(path.with_suffix(".lock")):
        seen = load_seen(path)
        seen[repo] = sha
        write_text_atomic(path, json.dumps(seen, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ polling

OrgLister = Callable[[str], Iterable[str]]


def hub_org_lister(endpoint: str | None) -> OrgLister:
    """List an org's model ids with ``HfApi.list_models(author=org)``."""

    def list_org(org: str) -> list[str]:
        from huggingface_hub import HfApi

        try:
            return [m.id for m in HfApi(endpoint=endpoint).list_models(author=org)]
        except Exception as exc:  # noqa: BLE001 (huggingface_hub raises many types)
            raise WatchError(f"cannot list the models of {org} on {endpoint or 'the public Hub'}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                             "check HF_ENDPOINT and the network, or watch repo ids instead (watch_repos)") from None

    return list_org


def mirror_org_lister(mirror_dir: Path) -> OrgLister:
    """List an org's repos on the loopback mirror (olah offline cannot list models)."""

    def list_org(org: str) -> list[str]:
        base = Path(mirror_dir) / "models" / org
        return sorted(f"{org}/{p.name}" for p in base.iterdir() if (p / ".git").is_dir()) if base.is_dir() else []

    return list_org


def find_new_revisions(watch_list: WatchList, seen: dict[str, str], *, endpoint: str | None = None,
                       list_org: OrgLister | None = None) -> list[Revision]:
    """The head revisions of watched repos that differ from ``seen``; one per repo, in order.

    Only repos on the watch list are polled: a repo an org listing returns that is not a model
    of that org is logged and ignored.

    Every repo's ``main`` is resolved to a sha with an explicit revision. A repo or org the Hub
    cannot answer for is logged and skipped (it is polled again next time); if nothing at all
    could be polled, :class:`WatchError` is raised.
    """
    from onramp.hub import HubError, resolve_revision

    list_org = list_org or hub_org_lister(endpoint)
    repos: list[str] = list(dict.fromkeys(watch_list.repos))
    failures: list[str] = []
    for org in watch_list.orgs:
        try:
            listed = list(list_org(org))
        except WatchError as exc:
            log.warning("%s", exc)
            failures.append(org)
            continue
        for repo in listed:
            if not watch_list.covers(repo):  # a listing must not widen the watch list
                log.warning("ignoring %s listed for org %s: not on the watch list", repo, org)
            elif repo not in repos:
                repos.append(repo)
    new: list[Revision] = []
    for repo in repos:
        try:
            sha = resolve_revision(repo, BRANCH, endpoint)
        except HubError as exc:
            log.warning("%s", exc)
            failures.append(repo)
            continue
        if seen.get(repo) != sha:
            new.append(Revision(repo=repo, sha=sha, previous=seen.get(repo)))
    polled = len(repos) + len(watch_list.orgs)
    if failures and len(failures) >= polled:
        raise WatchError(f"could not poll any watched repo or org ({', '.join(failures[:5])})",
                         "check HF_ENDPOINT (or ONRAMP_HF_ENDPOINT) and that the Hub or mirror answers")
    return new


# ------------------------------------------------------------------------------ the flow

@task(name="poll-hub")
def poll_hub(watch_list: WatchList, seen: dict[str, str], endpoint: str | None,
             mirror_dir: str | None) -> list[Revision]:
    """One poll. Not retried as a task: onramp.hub retries each Hub call on network errors (one
    retry layer), and a repo or org that still fails is polled again at the next run."""
    lister = mirror_org_lister(Path(mirror_dir)) if mirror_dir else hub_org_lister(endpoint)
    return find_new_revisions(watch_list, seen, endpoint=endpoint, list_org=lister)


@task(name="emit-revision-event")
def emit_revision(revision: Revision, state_file: str) -> str:
    event = emit_revision_event(revision)
    mark_seen(Path(state_file), revision.repo, revision.sha)
    return str(event.id) if event is not None else ""


@flow(name="watch")
def watch() -> list[Revision]:
    """Poll the Hub for new revisions of the watch list; emit one event per new revision."""
    from onramp.settings import load_settings

    logger = get_run_logger()
    settings = load_settings()
    watch_list = WatchList.from_settings(settings)
    if not watch_list.repos and not watch_list.orgs:
        logger.info("the watch list is empty: set watch_repos / watch_orgs (ONRAMP_WATCH_REPOS, ONRAMP_WATCH_ORGS)")
        return []
    path = state_path(settings)
    on_mirror = bool(settings.hf_endpoint) and settings.hf_endpoint.rstrip("/") == settings.mirror_url
    new = poll_hub(watch_list, load_seen(path), settings.hf_endpoint, str(settings.mirror_dir) if on_mirror else None)
    for revision in new:
        emit_revision(revision, str(path))
        logger.info("new revision %s@%s", revision.repo, revision.sha[:12])
    if not new:
        logger.info("no new revision among %d repos and %d orgs", len(watch_list.repos), len(watch_list.orgs))
    return new
