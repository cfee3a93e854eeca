"""A dataset served over HTTP (loopback): shards staged into a bounded cache, resumed after a dropped connection,
checked against the manifest, evicted least recently used; the loader reads it as it reads a local folder."""

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vmae.pipeline.data.config import DataConfig
from vmae.pipeline.data.loader import make_loader
from vmae.pipeline.data.remote import RemoteError, ShardCache
from vmae.pipeline.data.shardset import ShardSet


class Handler(BaseHTTPRequestHandler):
    """Serves ``root`` with Range support; ``drop`` names files whose first response stops half-way, ``corrupt``
    maps names to how many responses come with flipped bytes."""

    root: Path
    drop: set[str]
    corrupt: dict[str, int]
    log: list[tuple[str, str]]

    def do_GET(self):  # noqa: N802 - the http.server name
        name = self.path.lstrip("/")
        path = self.root / name
        self.log.append((name, self.headers.get("Range", "")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = data[start:]
        if self.corrupt.get(name):
            self.corrupt[name] -= 1
            body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.drop:
            self.drop.discard(name)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(built, tmp_path):
    """The built test dataset on a loopback HTTP server; yields (url, handler class)."""
    root = tmp_path / "served"
    shutil.copytree(built[0], root)
    handler = type("H", (Handler,), {"root": root, "drop": set(), "corrupt": {}, "log": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


def small(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(**{"frames": 8, "stride": 2, "views": 2, "crop_size": 64, "batch_size": 2, "workers": 2,
                         "shuffle_buffer": 4, "backend": "cpu", "cache_dir": str(tmp_path / "cache"), **kw})


@pytest.mark.slow
def test_a_dataset_over_http_loads_the_same_batches_as_the_local_folder(built, server, tmp_path):
    url, handler = server
    handler.drop.add("shard-000001.tar")  # its first download is cut half-way
    remote = [b for b in _epoch(make_loader(url, small(tmp_path), device="cpu"))]
    local = [b for b in _epoch(make_loader(built[0], small(tmp_path), device="cpu"))]
    assert [b["key"] for b in remote] == [b["key"] for b in local]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(remote, local, strict=True))
    resumed = [r for name, r in handler.log if name == "shard-000001.tar" and r]
    assert resumed, handler.log  # the second request asked for the rest (Range), not the whole file again
    cached = ShardSet(url, cache_dir=str(tmp_path / "cache"))
    for entry in cached.entries:  # every staged copy is the manifest's bytes
        assert hashlib.sha256((cached.dataset / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]


def test_wrong_bytes_are_fetched_again_and_a_server_that_keeps_sending_them_is_named(built, server, tmp_path):
    url, handler = server
    entry = json.loads((built[0] / "manifest.json").read_text())["shards"][0]
    cache = ShardCache(url, tmp_path / "cache", backoff=0.01, retries=2)
    handler.corrupt[entry["name"]] = 1
    assert hashlib.sha256(cache.local(entry).read_bytes()).hexdigest() == entry["sha256"]
    (cache.folder / entry["name"]).unlink()
    handler.corrupt[entry["name"]] = 10
    with pytest.raises(RemoteError, match=f"{entry['name']}: its sha256 differs.*3 tries"):
        cache.local(entry)
    assert not list(cache.folder.glob("*.part"))  # nothing half-written is left behind


def test_the_cache_keeps_to_its_budget_evicting_the_least_recently_used(built, server, tmp_path):
    url, _ = server
    entries = json.loads((built[0] / "manifest.json").read_text())["shards"]
    budget = sum(sorted(e["bytes"] for e in entries)[-2:])  # room for the two largest shards
    cache = ShardCache(url, tmp_path / "cache", max_bytes=budget)
    for entry in entries + entries[:1]:
        cache.local(entry)
        assert sum(p.stat().st_size for p in cache.folder.glob("*.tar")) <= budget
    assert cache.downloads > len(entries)  # the first shard was evicted, then fetched again


def test_an_unreachable_dataset_url_is_a_clear_error(tmp_path):
    cache = ShardCache("http://127.0.0.1:9", tmp_path, retries=1, backoff=0.01)  # port 9: nothing listens
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1:9/manifest.json: cannot connect.*2 tries"):
        cache.fetch_manifest()


def _epoch(loader):
    loader.set_epoch(0)
    return list(loader)
