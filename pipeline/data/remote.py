"""Datasets on an HTTP(S) server or an object store's HTTP endpoint: shards staged into a bounded local cache.

The loader reads local files (DALI's reader and the seeking CPU decoder both do), so a remote dataset's shards are
downloaded into a cache folder ahead of need: resumed where a connection dropped (HTTP Range), checked against the
manifest's size and sha256, renamed into place only when whole, and evicted least-recently-used when the cache
would pass its budget. Several processes (decode workers, ranks of one machine) share one cache: a shard is
downloaded by one of them under a file lock while the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from vmae.shards.format import MANIFEST, index_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class RemoteError(OSError):
    """A remote file that cannot be read (an I/O error of the dataset); the message names the URL and what to do."""


def is_url(value: object) -> bool:
    return str(value).startswith(("http://", "https://"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("VMAE_CACHE") or Path.home() / ".cache" / "vmae" / "shards")


class ShardCache:
    """The local copies of one remote dataset's files, at most ``max_bytes`` of shards at a time."""

    def __init__(self, url: str, folder: Path | None = None, max_bytes: int = 50 << 30, retries: int = 5,
                 timeout: float = 60.0, backoff: float = 1.0):
        self.url = url.rstrip("/")
        name = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.folder = Path(folder or default_cache_dir()) / name  # one folder per dataset URL
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.retries, self.timeout, self.backoff = max_bytes, retries, timeout, backoff
        self.downloads = 0  # files this process fetched (cache misses)
        self.resumed = 0  # downloads continued after a dropped connection
        self._ahead: queue.SimpleQueue | None = None

    def __getstate__(self) -> dict:  # decode workers get their own prefetch thread
        return {**self.__dict__, "_ahead": None}

    def fetch_manifest(self) -> Path:
        """The dataset's manifest, fetched again into the cache folder (it is small, and the dataset may have been
        rebuilt); read it with ``vmae.shards.format.load_manifest``."""
        path = self.folder / MANIFEST
        self._download(MANIFEST, path)
        return path

    def local(self, entry: dict) -> Path:
        """The local copy of a manifest shard entry (tar and index), downloaded and checked first if needed."""
        tar, index = self.folder / entry["name"], self.folder / entry["index"]
        if tar.exists() and index.exists():
            os.utime(tar)  # recently used: evicted last
            return tar
        with _locked(self.folder / f".{entry['name']}.lock"):
            if not index.exists():
                self._download(entry["index"], index)
            if not tar.exists():
                self._make_room(entry["bytes"])
                self._download(entry["name"], tar, entry["bytes"], entry["sha256"])
        return tar

    def prefetch(self, entries: list[dict]) -> None:
        """Stage ``entries`` in order in the background (replacing what was queued before)."""
        if self._ahead is None:
            self._ahead = queue.SimpleQueue()
            threading.Thread(target=self._prefetch, args=(self._ahead,), daemon=True, name="vmae-prefetch").start()
        self._ahead.put(list(entries))

    def _prefetch(self, ahead: queue.SimpleQueue) -> None:
        pending: list[dict] = []
        while True:
            if not pending or not ahead.empty():
                pending = ahead.get()
                continue
            entry = pending.pop(0)
            try:
                self.local(entry)
            except (RemoteError, OSError) as err:  # the reader will meet it again, and report it
                log.warning("prefetching %s failed: %s", entry["name"], err)

    def _make_room(self, size: int) -> None:
        """Evict the least recently used shards until ``size`` more bytes fit in the budget."""
        shards = sorted((p.stat().st_mtime, p) for p in self.folder.glob("*.tar"))
        used = sum(p.stat().st_size for _, p in shards)
        for _, path in shards:
            if used + size <= self.max_bytes:
                break
            used -= path.stat().st_size
            path.unlink(missing_ok=True)  # an open copy stays readable to whoever holds it
            index_path(path).unlink(missing_ok=True)
        if used + size > self.max_bytes:
            log.warning("cache %s: %d MB needed but data.cache_gb allows %d MB: raise it", self.folder,
                        (used + size) >> 20, self.max_bytes >> 20)

    def _download(self, name: str, target: Path, size: int | None = None, sha256: str | None = None) -> None:
        """``name`` from the server into ``target``, resuming after a dropped connection, retried with a growing
        wait; renamed into place only once its size and checksum are right."""
        partial = target.with_name(target.name + ".part")
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self._fetch_into(name, partial)
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as err:
                problem = _describe(err)
                if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404):
                    break  # another try will not help
                continue
            got = partial.stat().st_size
            if size is not None and got < size:
                problem = f"the connection ended after {got} of {size} bytes"
                continue  # the next try asks for the rest
            if size is not None and got > size:
                problem = f"{got} bytes, the manifest says {size}"
            elif sha256 is not None and _sha256(partial) != sha256:
                problem = "its sha256 differs from the manifest's"
            else:
                os.replace(partial, target)
                self.downloads += 1
                return
            partial.unlink()  # whole but wrong: start again from the first byte
        partial.unlink(missing_ok=True)
        raise RemoteError(f"{self.url}/{name}: {problem} (after {attempt + 1} tries); check the server, or copy the "
                          "dataset to local disk")

    def _fetch_into(self, name: str, partial: Path) -> None:
        """Append the rest of ``name`` to ``partial`` (from its current length when the server honours Range)."""
        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(f"{self.url}/{name}", headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code != 416:  # 416: nothing past what we have
                raise
            return
        with response:
            if have and response.status != 206:  # the server sent the whole file again
                have = 0
            elif have:
                self.resumed += 1
            with partial.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                try:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                except http.client.IncompleteRead as cut:
                    out.write(cut.partial)  # keep what came: the next try asks for the rest
                    raise


class _locked:
    """An exclusive lock on a file, held by one process (or thread) at a time."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = self.path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *_) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({err.reason})"
    return f"{type(err).__name__}: {err}"
