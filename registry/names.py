"""Registered model names: one per Hub repo, keyed by the full repo id.

A registered model is named after the whole repo id, ``ORG/NAME`` → ``org--name`` (lower case,
as the Hub compares ids case-insensitively; ``--`` cannot occur in a Hub id, so the org and the
name are always told apart; MLflow refuses ``/`` and ``:`` in names). ``someone/SmolLM2-135M-Instruct``
and ``HuggingFaceTB/SmolLM2-135M-Instruct`` are two registered models, each with its own
``production``. An engine built from a local directory (no repo) keeps its served name.

The short name (``NAME`` alone, e.g. ``smollm2-135m-instruct``) is what a user would type;
:func:`short_aliases` says which short names are unambiguous among the registered models, and
``onramp serve --registry`` serves those as aliases as well.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["LOCK_SUFFIX", "is_lock_name", "registered_name", "short_aliases", "short_name"]

SEPARATOR = "--"
LOCK_SUFFIX = ".onramp-lock"  # ``<name>.onramp-lock``: a production lock (registry.promotion), not a model


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")


def registered_name(repo: str | None, served: str) -> str:
    """The registered model of an engine built from ``repo`` (``ORG/NAME`` → ``org--name``); an
    engine with no Hub repo (a local checkpoint) is registered under its ``served`` name."""
    if repo:
        org, sep, name = str(repo).strip("/").partition("/")
        if sep and _slug(org) and _slug(name):
            return f"{_slug(org)}{SEPARATOR}{_slug(name)}"
        if _slug(repo):
            return _slug(repo)
    return served


def short_name(registered: str) -> str:
    """``huggingfacetb--smollm2-135m-instruct`` → ``smollm2-135m-instruct`` (a name without an org
    is its own short name)."""
    return registered.rsplit(SEPARATOR, 1)[-1]


def short_aliases(names: Iterable[str]) -> dict[str, str]:
    """``{short: registered}`` for each short name that exactly one registered model has and that
    is not itself a registered name. Two orgs' models of the same name get no alias at all, so a
    short name never silently means another org's model."""
    names = set(names)
    counts = Counter(short_name(n) for n in names)
    return {short_name(n): n for n in sorted(names)
            if short_name(n) != n and counts[short_name(n)] == 1 and short_name(n) not in names}


def is_lock_name(name: str) -> bool:
    """Whether a registered model is a production lock (never listed as a model)."""
    return name.endswith(LOCK_SUFFIX)
