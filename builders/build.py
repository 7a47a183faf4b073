"""``build_engine``: one checkpoint + one layout + one backend → one finished engine directory.

A build is identified by (source, layout, backend version): the source is the Hub revision
sha when there is one, else a hash of the checkpoint's files; the backend's toolchain versions
(e.g. optimum-intel and nncf for OpenVINO) are part of it too, since they shape the files.
The engine directory is ``<out_root>/<name>--<backend>-<quant>-tp<N>--<build_id[:12]>``.

- Asking again for a finished build returns its directory at once, after checking its
  manifest and every file's sha256; a directory that fails that check is rebuilt.
- A build runs in ``<out_root>/.tmp-*`` and is renamed into place only after its manifest is
  written, so a half-written build is never taken for a finished one. A per-build lock keeps
  two processes from building the same thing at once; the second waits and returns the first's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from filelock import FileLock

from builders.backends import DEFAULT_BACKEND, get_backend
from builders.errors import CheckpointError, ManifestError
from builders.facts import ModelFacts, inspect_checkpoint
from builders.manifest import Layout, Manifest, Runtime, Source, hash_files, now_utc, read_manifest, sha256_file, \
    verify_files, write_manifest
from onramp.files import write_text_atomic

log = logging.getLogger(__name__)
_SHA = re.compile(r"^[0-9a-f]{40}$")


def served_name(repo_or_dir: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` → ``smollm2-135m-instruct``."""
    last = str(repo_or_dir).rstrip("/").split("/")[-1]
    return re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-") or "model"


def checkpoint_digest(checkpoint: Path, memo_dir: Path | None = None) -> str:
    """sha256 over the checkpoint's files (relative path + content hash), dotfiles excluded.

    With ``memo_dir``, the result is remembered per checkpoint path together with every file's
    size and mtime, so asking again for an unchanged checkpoint does not re-read its weights.
    """
    root = Path(checkpoint).resolve()
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts):
            st = path.stat()
            files.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"
        try:
            saved = json.loads(memo.read_text())
            if saved.get("files") == files:
                return saved["digest"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    digest = hashlib.sha256()
    for rel, _, _ in files:
        digest.update(f"{rel}\0{sha256_file(root / rel)}\n".encode())
    result = digest.hexdigest()
    if memo is not None:
        write_text_atomic(memo, json.dumps({"path": str(root), "files": files, "digest": result}))
    return result


def compute_build_id(source_key: str, layout: Layout, backend: str, backend_version: str,
                     toolchain: dict[str, str], runtime: Runtime | None = None) -> str:
    payload = {"source": source_key, "layout": layout.model_dump(), "backend": backend,
               "backend_version": backend_version, "toolchain": dict(sorted(toolchain.items()))}
    if runtime is not None and (runtime.properties or runtime.scheduler):
        payload["runtime"] = {k: v for k, v in runtime.model_dump().items() if v or k != "decoding"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def resolve_source(source: str | Path, repo: str | None, revision: str | None,
                   settings) -> tuple[Path, str | None, str | None]:
    """A local checkpoint dir, or a Hub repo id pulled (pinned to a sha) through ``onramp.hub.pull``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), repo, revision
    text = str(source)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not path.exists():
        from onramp.hub import pull

        local, sha = pull(text, revision or "main", endpoint=settings.hf_endpoint,
                          cache_dir=Path(settings.cache_dir) / "hub", settings=settings)
        return local, repo or text, sha
    raise CheckpointError(f"source {text!r} is neither a local checkpoint directory nor a Hub repo id",
                          "pass a directory with config.json and *.safetensors, or ORG/NAME on the Hub (HF_ENDPOINT)")


def engine_dir_name(name: str, layout: Layout, backend: str, build_id: str) -> str:
    return f"{name}--{backend}-{layout.quantization}-tp{layout.tp}--{build_id[:12]}"


def finished_build(path: Path, build_id: str) -> Manifest | None:
    """The manifest of a finished, intact build of ``build_id`` at ``path``, else None."""
    if not (path / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(path)
        if manifest.build_id != build_id:
            return None
        verify_files(path, manifest)
    except ManifestError as err:
        log.warning("ignoring the engine at %s: %s", path, err)
        return None
    return manifest


@dataclass
class BuildRequest:
    """Everything known about a build before it runs: its identity and where it goes."""

    impl: object
    checkpoint: Path
    repo: str | None
    revision: str | None
    facts: ModelFacts
    layout: Layout
    backend_version: str
    toolchain: dict[str, str]
    runtime: Runtime
    build_id: str
    name: str
    out_root: Path
    final: Path

    def describe(self) -> str:
        """The engine dir, build id, layout, whether it is built, and the commands a build runs."""
        lines = [f"engine: {self.final}", f"build id: {self.build_id}",
                 f"backend: {self.impl.name} {self.backend_version}",
                 "layout: " + ", ".join(f"{k}={v}" for k, v in self.layout.model_dump().items()),
                 "runtime properties: " + (", ".join(f"{k}={v}" for k, v in self.runtime.properties.items())
                                           or "none"),
                 "scheduler: " + (", ".join(f"{k}={v}" for k, v in self.runtime.scheduler.items()) or "none"),
                 f"status: {'built' if finished_build(self.final, self.build_id) else 'not built'}",
                 "commands (run in a temp dir, renamed into place when done):"]
        text = self.impl.commands_text(self.checkpoint, self.out_root / f".tmp-{self.final.name}-XXXX",
                                       self.layout, self.facts)
        return "\n".join(lines) + "\n" + text.rstrip("\n")


def prepare_build(source: str | Path, *, backend: str = DEFAULT_BACKEND, quant: str = "int8",
                  out_root: Path | None = None, repo: str | None = None, revision: str | None = None,
                  layout: Layout | None = None, hardware: str | None = None, tp: int | None = None,
                  settings=None, runtime_precision: str | None = None) -> BuildRequest:
    """Resolve the source (pulling a Hub repo), check it, pick the layout and compute the build id."""
    from onramp.settings import load_settings

    settings = settings or load_settings()
    impl = get_backend(backend)
    checkpoint, repo, revision = resolve_source(source, repo, revision, settings)
    facts: ModelFacts = inspect_checkpoint(checkpoint)
    if layout is None and hardware is not None:
        from builders.planner import choose_layout

        layout = choose_layout(facts, hardware, quant, tp)
    layout = layout or impl.default_layout(facts, quant)
    backend_version, toolchain = impl.version(), impl.toolchain()
    default_runtime = getattr(impl, "default_runtime", None)
    runtime = Runtime.model_validate(default_runtime(layout, runtime_precision) if default_runtime else {})
    out_root = Path(out_root or settings.engines_dir).expanduser().resolve()
    if revision and _SHA.match(revision):
        source_key = f"sha:{revision}"
    else:
        source_key = f"content:{checkpoint_digest(checkpoint, memo_dir=out_root / '.digests')}"
    build_id = compute_build_id(source_key, layout, impl.name, backend_version, toolchain, runtime)
    name = served_name(repo or checkpoint.name)
    final = out_root / engine_dir_name(name, layout, impl.name, build_id)
    return BuildRequest(impl=impl, checkpoint=checkpoint, repo=repo, revision=revision, facts=facts,
                        layout=layout, backend_version=backend_version, toolchain=toolchain, runtime=runtime,
                        build_id=build_id,
                        name=name, out_root=out_root, final=final)


def build_engine(source: str | Path, *, backend: str = DEFAULT_BACKEND, quant: str = "int8",
                 out_root: Path | None = None, repo: str | None = None, revision: str | None = None,
                 layout: Layout | None = None, hardware: str | None = None, tp: int | None = None,
                 settings=None, progress: Callable[[str], None] | None = None,
                 runtime_precision: str | None = None) -> Path:
    """Build (or find already built) the engine of ``source`` and return its directory.

    ``source``: a local checkpoint directory or a Hub repo id. ``repo``/``revision`` name
    where a local directory came from (recorded in the manifest; a 40-hex ``revision`` is used
    as the source's identity instead of hashing the files). ``layout`` overrides the
    backend's default layout for ``quant``; ``hardware`` (and optionally ``tp``) picks the
    layout with the planner instead (:func:`builders.planner.choose_layout`).
    """
    from onramp import __version__

    say = progress or (lambda msg: log.info("%s", msg))
    req = prepare_build(source, backend=backend, quant=quant, out_root=out_root, repo=repo, revision=revision,
                        layout=layout, hardware=hardware, tp=tp, settings=settings,
                        runtime_precision=runtime_precision)
    impl, checkpoint, repo, revision, facts, layout = (req.impl, req.checkpoint, req.repo, req.revision,
                                                       req.facts, req.layout)
    backend_version, toolchain, build_id, name, out_root, final = (req.backend_version, req.toolchain, req.build_id,
                                                                    req.name, req.out_root, req.final)
    if finished_build(final, build_id):
        say(f"cached: {final}")
        return final
    impl.check_available()
    out_root.mkdir(parents=True, exist_ok=True)
    with FileLock(out_root / ".locks" / f"{build_id}.lock"):  # one build of an id at a time
        if finished_build(final, build_id):  # built by another process while we waited
            say(f"cached: {final}")
            return final
        for stale in out_root.glob(f".tmp-{final.name}-*"):  # left by a build that died
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out_root, prefix=f".tmp-{final.name}-"))
        os.chmod(tmp, 0o755)
        log_path = out_root / ".logs" / f"{final.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        try:
            say(f"building {name} with {impl.name} {backend_version} ({layout.quantization}, tp={layout.tp}); "
                f"log: {log_path}")
            start = time.monotonic()
            impl.build(checkpoint, tmp, layout, facts, log_path)
            seconds = round(time.monotonic() - start, 2)
            say(f"built in {seconds:.1f} s; hashing files")
            manifest = Manifest(
                name=name, source=Source(repo=repo, revision=revision, path=str(checkpoint)),
                backend=impl.name, backend_version=backend_version, builder_version=__version__,
                toolchain=toolchain, layout=layout, runtime=req.runtime, build_id=build_id, files=hash_files(tmp),
                build_seconds=seconds, host=socket.gethostname(), created=now_utc(),
            )
            write_manifest(tmp, manifest)
            if final.exists():  # a damaged earlier build of the same id
                trash = Path(tempfile.mkdtemp(dir=out_root, prefix=".trash-"))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    say(f"engine: {final}")
    return final
