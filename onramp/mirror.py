"""A Hugging Face Hub mirror on loopback.

olah (a self-hosted Hub mirror) serves local git repositories laid out as
``<mirror_dir>/models/<org>/<name>``. olah pins a newer huggingface-hub than onramp, so it
runs from its own virtual environment (made once, under the cache dir) as a separate process.
``publish`` commits a checkpoint directory as a new revision on branch ``main``: to anyone
polling the mirror through ``HF_ENDPOINT``, that is a new model revision dropping on the Hub.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from onramp.errors import MirrorError
from onramp.files import atomic_path, write_text_atomic
from onramp.process import Child, ChildExited, ChildTimeout, any_answer, port_in_use, start_child

log = logging.getLogger(__name__)

OLAH_VERSION = "0.5.4"
LFS_THRESHOLD = 1 << 20  # files this large are stored as git-lfs objects, as the Hub does
_GIT = ["git", "-c", "user.name=onramp", "-c", "user.email=onramp@localhost", "-c", "commit.gpgsign=false"]


def repo_path(mirror_dir: Path, repo_id: str) -> Path:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(p and p not in {".", ".."} and p.strip() == p for p in parts):
        raise MirrorError(f"bad repo id {repo_id!r}",
                          "use the Hub's ORG/NAME form, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    return mirror_dir / "models" / parts[0] / parts[1]


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run([*_GIT, "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MirrorError(f"git {args[0]} failed in {repo}: {proc.stderr.strip().splitlines()[-1:]}",
                          "check the mirror directory is writable and a git repository")
    return proc.stdout.strip()


def _store_lfs(repo: Path, src: Path, pointer: Path) -> None:
    """Store ``src`` as a git-lfs object of ``repo`` and write its pointer file at ``pointer``.

    olah serves LFS objects from ``.git/lfs/objects`` straight from disk, with their sha256 as
    the etag (as the Hub does), instead of inflating a 100+ MB git blob on every request.
    """
    digest = hashlib.sha256()
    with src.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    oid = digest.hexdigest()
    obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    if not obj.exists():
        with atomic_path(obj) as tmp:
            shutil.copyfile(src, tmp)
    pointer.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {src.stat().st_size}\n")


def publish(repo_id: str, checkpoint: Path, mirror_dir: Path, message: str | None = None) -> str:
    """Commit ``checkpoint``'s files as the new head of ``main`` in the mirror; return the sha.

    The previous revision's files are replaced (files absent from ``checkpoint`` are removed),
    so each publish is a full snapshot. Publishing identical content still makes a new commit
    (a new revision, as a re-upload on the Hub would).
    """
    checkpoint = Path(checkpoint)
    repo = repo_path(Path(mirror_dir), repo_id)
    if not checkpoint.is_dir():
        raise MirrorError(f"checkpoint directory {checkpoint} does not exist", "pass a directory with config.json")
    if not (checkpoint / "config.json").is_file():
        raise MirrorError(f"{checkpoint} has no config.json", "pass a Hugging Face checkpoint directory")
    if shutil.which("git") is None:
        raise MirrorError("git is not installed", "install git (apt-get install git)")
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    for entry in repo.iterdir():
        if entry.name == ".git":
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for src in checkpoint.rglob("*"):
        rel = src.relative_to(checkpoint)
        if any(part.startswith(".") for part in rel.parts):
            continue  # onramp's own markers, editor files
        dst = repo / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.stat().st_size >= LFS_THRESHOLD:
                _store_lfs(repo, src, dst)
            else:
                shutil.copy2(src, dst)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", message or f"onramp publish {checkpoint.name}")
    return _git(repo, "rev-parse", "HEAD")


# ---------------------------------------------------------------------------------- olah

def ensure_olah(venv: Path) -> Path:
    """Make (once) a virtual environment with olah and return its ``olah-cli``."""
    cli = venv / "bin" / "olah-cli"
    marker = venv / f".olah-{OLAH_VERSION}"
    if cli.exists() and marker.exists():
        return cli
    log.info("installing olah %s into %s (once)", OLAH_VERSION, venv)
    # A venv hard-codes its own path, so it is built in place; the marker, written last, is
    # what says it is finished. A half-built venv (no marker) is removed and built again.
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"olah=={OLAH_VERSION}"],
            capture_output=True, text=True, timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise MirrorError(f"could not create olah's virtual environment: {exc}",
                          "check that python3 -m venv works") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MirrorError(f"pip could not install olah=={OLAH_VERSION}: {last}",
                          "check the package index is reachable (pip config list)")
    marker.write_text(OLAH_VERSION + "\n")
    return cli


def write_config(path: Path, *, host: str, port: int, mirror_dir: Path, work_dir: Path) -> Path:
    (mirror_dir / "models").mkdir(parents=True, exist_ok=True)
    return write_text_atomic(
        path,
        "[basic]\n"
        f'host = "{host}"\n'
        f"port = {port}\n"
        f'repos-path = "{work_dir / "repos"}"\n'
        f'mirror-netloc = "{host}:{port}"\n'
        f'mirror-lfs-netloc = "{host}:{port}"\n'
        f'mirrors-path = ["{mirror_dir}"]\n'
        "metadata-cache-ttl = 0\n"
        "\n[accessibility]\n"
        "offline = true\n",
    )


class MirrorServer:
    """olah serving ``mirror_dir`` on ``host:port``; a context manager that starts and stops it."""

    def __init__(self, mirror_dir: Path, *, host: str = "127.0.0.1", port: int = 8090,
                 venv: Path, work_dir: Path, start_timeout: float = 60.0):
        self.mirror_dir = Path(mirror_dir)
        self.host, self.port = host, port
        self.venv, self.work_dir = Path(venv), Path(work_dir)
        self.start_timeout = start_timeout
        self.child: Child | None = None
        self.log_path = self.work_dir / "olah.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MirrorServer:
        if port_in_use(self.host, self.port):
            raise MirrorError(f"port {self.port} on {self.host} is already in use",
                              "pass another --port (or ONRAMP_MIRROR_PORT) or stop what listens there")
        if self.mirror_dir.exists() and not self.mirror_dir.is_dir():
            raise MirrorError(f"mirror directory {self.mirror_dir} is not a directory",
                              "pass a directory to --dir (or ONRAMP_MIRROR_DIR)")
        cli = ensure_olah(self.venv)
        config = write_config(self.work_dir / "olah.toml", host=self.host, port=self.port,
                              mirror_dir=self.mirror_dir, work_dir=self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        self.child = start_child([str(cli), "-c", str(config)], log=self.log_path, name="olah", env=env,
                                 cwd=self.work_dir, append=True)
        try:  # any HTTP answer means the server is up
            self.child.wait_healthy(f"{self.url}/api/models/onramp/healthcheck/revision/main",
                                    timeout=self.start_timeout, interval=0.3, ready=any_answer)
        except ChildExited as exc:
            self.child = None
            raise MirrorError(f"olah exited at start (code {exc.code}): {exc.child.log_tail(lines=1)}",
                              f"see {self.log_path}") from None
        except ChildTimeout:
            self.stop()
            raise MirrorError(f"olah did not answer on {self.url} within {self.start_timeout:.0f} s",
                              f"see {self.log_path}") from None
        except BaseException:  # a signal or Ctrl-C while waiting: olah must not outlive us
            self.stop()
            raise
        return self

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.child.proc if self.child is not None else None

    def log_tail(self) -> str:
        return self.child.log_tail() if self.child is not None else "no log"

    def stop(self) -> None:
        """SIGTERM olah's process group (it is a session leader), SIGKILL it after 10 s."""
        if self.child is not None:
            self.child.stop(timeout=10)
        self.child = None

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_from_settings(settings, port: int | None = None, mirror_dir: Path | None = None) -> MirrorServer:
    return MirrorServer(
        mirror_dir or settings.mirror_dir, host=settings.mirror_host, port=port or settings.mirror_port,
        venv=settings.cache_dir / "olah-venv", work_dir=settings.home / "olah",
    )
