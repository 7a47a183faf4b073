"""manifest.json: what an engine directory holds, how it was built, and the checksum of every file.

A directory is a finished engine only if its manifest parses (unknown fields are refused) and
every file it lists is there with the listed size and sha256 (:func:`verify_files`). Manifests
are written last, through a temp file and a rename, so a half-written one never exists.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, UTC
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from builders.errors import ManifestError
from onramp.files import read_mapping, write_text_atomic

MANIFEST = "manifest.json"
SCHEMA = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Layout(_Strict):
    """How an engine is laid out on its hardware; part of the build's identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware: str = "cpu"
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    dtype: Literal["fp32", "fp16", "bf16"] = "bf16"
    quantization: Literal["none", "fp16", "int8", "int4", "int4_awq", "fp8"] = "int8"
    max_batch: int = Field(32, ge=1)
    max_input_len: int = Field(2048, ge=1)
    max_seq_len: int = Field(4096, ge=1)


class Source(_Strict):
    repo: str | None = None
    revision: str | None = None
    path: str | None = None


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Runtime(_Strict):
    """How the engine is loaded: backend properties that change numerics or speed, and scheduler
    settings. Chosen at build time and honoured by every loader (serving, evals, benchmarks)."""

    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    scheduler: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    # how tokens are produced without changing which: prompt-lookup decoding (builders.ov_runtime)
    decoding: dict[str, int] = Field(default_factory=dict)


class Manifest(_Strict):
    schema_: int = Field(SCHEMA, alias="schema")
    name: str
    source: Source
    backend: str
    backend_version: str
    builder_version: str
    toolchain: dict[str, str] = Field(default_factory=dict,
                                      description="Versions of the packages that produced the files.")
    layout: Layout
    runtime: Runtime = Field(default_factory=Runtime)
    build_id: str
    files: dict[str, FileEntry]
    build_seconds: float
    host: str
    created: str

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True), indent=2) + "\n"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_files(root: Path) -> list[str]:
    """Every regular file under ``root`` except the manifest and dotfiles, as sorted POSIX paths."""
    root = Path(root)
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue  # temp files, editor files, a runtime's cache dir
        if path.is_file() and not path.is_symlink() and rel.as_posix() != MANIFEST:
            out.append(rel.as_posix())
    return sorted(out)


def hash_files(root: Path) -> dict[str, FileEntry]:
    root = Path(root)
    return {rel: FileEntry(sha256=sha256_file(root / rel), size=(root / rel).stat().st_size)
            for rel in engine_files(root)}


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write ``root/manifest.json`` atomically (temp file, fsync, rename)."""
    return write_text_atomic(Path(root) / MANIFEST, manifest.to_json())


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{root} has no {MANIFEST}: it is not a finished engine directory",
                            "build it with `onramp build SOURCE` (or pass the engine directory it printed)")
    data = read_mapping(path, ManifestError, "rebuild the engine (onramp build ...)")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"{path} is not a valid manifest: {loc}: {first['msg']}",
                            "rebuild the engine with this onramp version (onramp build ...)") from None


def verify_files(root: Path, manifest: Manifest | None = None, *, checksums: bool = True) -> None:
    """Check that every listed file exists with its size and sha256; raise naming the first bad one.

    Files present but not listed are refused too: an engine directory holds what its manifest
    says and nothing else. ``checksums=False`` checks presence and sizes only (fast).
    """
    root = Path(root)
    manifest = manifest or read_manifest(root)
    fix = "rebuild the engine (onramp build ...) or fetch it again from the registry"
    for rel, entry in sorted(manifest.files.items()):
        path = root / rel
        if not path.is_file():
            raise ManifestError(f"engine file {rel} listed in {root / MANIFEST} is missing", fix)
        size = path.stat().st_size
        if size != entry.size:
            raise ManifestError(f"engine file {rel} has {size} bytes, the manifest says {entry.size}", fix)
        if checksums and sha256_file(path) != entry.sha256:
            raise ManifestError(f"engine file {rel} does not match its sha256 in the manifest (corrupted)", fix)
    extra = sorted(set(engine_files(root)) - set(manifest.files))
    if extra:
        raise ManifestError(f"{root} holds files its manifest does not list: {', '.join(extra[:3])}", fix)
