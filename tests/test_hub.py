"""Named weights (jsr.hub): download once from a loopback HTTP server (or file://), verify the pinned sha256, convert,
reuse offline. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jsr import hub
from jsr.errors import RunFailure, UserError

NAME = "tiny-srgan-x4"
FILE_NAME = "tiny_srgan_x4.safetensors"


def tiny_checkpoint(path: Path) -> bytes:
    """A real SRGAN-PyTorch-layout generator state_dict (4 features, 1 block, x4) as .safetensors, without torch."""
    from safetensors.numpy import save_file

    from jsr.archs.srresnet import srgan_pytorch_targets

    rng = np.random.default_rng(0)
    state = {}
    for key, target in srgan_pytorch_targets(n_feats=4, num_blocks=1, scale=4).items():
        value = rng.standard_normal(target.shape).astype(np.float32) * 0.1
        state[key] = np.abs(value) + 0.5 if key.endswith("running_var") else value
    save_file(state, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> bytes:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / FILE_NAME)


class Server:
    """A loopback HTTP server in a thread: ``files`` maps a URL path to bytes; ``hits`` counts GET requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def server(checkpoint):
    s = Server({f"/{FILE_NAME}": checkpoint})
    yield s
    s.stop()


@pytest.fixture
def entry(checkpoint, monkeypatch) -> hub.NamedWeights:
    """A test-only entry with the tiny file's real sha256; its URL is never used (overridden per test)."""
    named = hub.NamedWeights(
        name=NAME,
        url=f"https://example.invalid/{FILE_NAME}",
        sha256=hashlib.sha256(checkpoint).hexdigest(),
        file_name=FILE_NAME,
        description="a 4-feature SRGAN-PyTorch generator made by the test",
        scale=4,
    )
    monkeypatch.setitem(hub.NAMED_WEIGHTS, NAME, named)
    for var in ("JSR_HUB_BASE_URL", "JSR_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    return named


def env_var(name: str) -> str:
    return "JSR_HUB_URL_" + name.upper().replace("-", "_")


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def no_network(*args, **kwargs):
    raise AssertionError(f"the network was used: urlopen{args}")


def test_download_verify_convert_then_offline(entry, server, tmp_path, monkeypatch, capsys):
    from jsr.checkpoints import load_model, read_description

    cache = tmp_path / "cache"
    monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
    # (a) first use: one request, verified, converted, loadable
    out = hub.resolve_weights(NAME, cache_dir=cache, progress=True)
    assert server.hits == [f"/{FILE_NAME}"]
    assert out == cache.absolute() / "models" / NAME
    module, variables = load_model(out, expect="generator")
    description = read_description(out)
    assert description["arch"] == "srresnet" and description["config"]["n_feats"] == 4
    assert description["source"]["sha256"] == entry.sha256
    assert (cache / "downloads" / FILE_NAME).read_bytes() == server.files[f"/{FILE_NAME}"]
    assert all_files(cache / "downloads") == [FILE_NAME]  # no staging file left
    assert sorted(p.name for p in (cache / "models").iterdir()) == [NAME]  # no staging folder left
    assert "downloading" in capsys.readouterr().err  # the progress bar, on stderr
    y = module.apply(variables, np.zeros((1, 6, 6, 3), np.float32))
    assert y.shape == (1, 24, 24, 3)

    # (b) second use: the server is gone and urlopen would fail the test; the same directory comes back
    server.stop()
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert hub.resolve_weights(NAME, cache_dir=cache) == out
    assert hub.resolve_weights(NAME.upper().replace("-", "_"), cache_dir=cache) == out  # case / '_' ignored
    assert server.hits == [f"/{FILE_NAME}"]
    # an existing path is returned as it is, name or not
    assert hub.resolve_weights(str(out)) == out


def test_default_cache_is_jsr_cache_dir(entry, server, tmp_path, monkeypatch):
    monkeypatch.setenv("JSR_CACHE_DIR", str(tmp_path / "c"))
    assert hub.cache_root() == tmp_path / "c"
    monkeypatch.delenv("JSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "jsr"
    monkeypatch.setenv("JSR_CACHE_DIR", str(tmp_path / "c"))
    # base_url (a mirror folder) is the argument's; the file keeps its own name
    out = hub.resolve_weights(NAME, base_url=server.url + "/", progress=False)
    assert out == tmp_path / "c" / "models" / NAME and server.hits == [f"/{FILE_NAME}"]


def test_corrupted_download_is_refused_and_removed(entry, checkpoint, tmp_path, monkeypatch):
    damaged = bytearray(checkpoint)
    damaged[len(damaged) // 2] ^= 0xFF
    server = Server({f"/{FILE_NAME}": bytes(damaged)})
    try:
        monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
        cache = tmp_path / "cache"
        with pytest.raises(UserError) as info:
            hub.resolve_weights(NAME, cache_dir=cache, progress=False)
    finally:
        server.stop()
    message = str(info.value)
    assert isinstance(info.value, hub.HashMismatch) and not isinstance(info.value, RunFailure)
    assert "sha256" in message and "\n" not in message
    assert NAME in message and entry.sha256 in message and hashlib.sha256(damaged).hexdigest() in message
    assert all_files(cache / "downloads") == []  # no partial, no staging file
    assert all_files(cache / "models") == []


def test_damaged_cached_download_is_fetched_again(entry, checkpoint, server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / FILE_NAME).write_bytes(b"truncated")
    monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
    raw = hub.fetch(entry, cache, progress=False)
    assert raw.read_bytes() == checkpoint and len(server.hits) == 1
    # a verified cached file is not fetched again
    assert hub.fetch(entry, cache, progress=False) == raw and len(server.hits) == 1


def test_file_url(entry, checkpoint, tmp_path, monkeypatch):
    from jsr.checkpoints import load_model

    source = tmp_path / "mirror" / FILE_NAME
    source.parent.mkdir()
    source.write_bytes(checkpoint)
    monkeypatch.setenv(env_var(NAME), source.as_uri())
    out = hub.resolve_weights(NAME, cache_dir=tmp_path / "cache", progress=False)
    load_model(out, expect="generator")
    # a file:// URL that does not exist: one-line RunFailure naming it
    monkeypatch.setenv(env_var(NAME), (tmp_path / "nowhere" / FILE_NAME).as_uri())
    with pytest.raises(RunFailure) as info:
        hub.resolve_weights(NAME, cache_dir=tmp_path / "cache2", progress=False)
    assert "nowhere" in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(UserError) as info:
        hub.resolve_weights("realesrgan-x5plus", cache_dir=tmp_path)
    message = str(info.value)
    assert "realesrgan-x5plus" in message and "\n" not in message
    for name in hub.NAMED_WEIGHTS:
        assert name in message
    assert not (tmp_path / "downloads").exists()


def test_http_404_and_refused_connection_are_one_line_run_failures(entry, server, tmp_path, monkeypatch):
    url = f"{server.url}/missing/{FILE_NAME}"
    monkeypatch.setenv(env_var(NAME), url)
    with pytest.raises(RunFailure) as info:
        hub.resolve_weights(NAME, cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert url in message and "404" in message and "\n" not in message
    assert not isinstance(info.value, UserError)
    assert all_files(tmp_path / "cache" / "downloads") == []
    server.stop()  # now nothing listens on that port
    monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
    with pytest.raises(RunFailure) as info:
        hub.resolve_weights(NAME, cache_dir=tmp_path / "cache", progress=False)
    assert server.url in str(info.value) and "\n" not in str(info.value)
    assert all_files(tmp_path / "cache" / "downloads") == []


def test_truncated_transfer_is_a_run_failure(entry, checkpoint, tmp_path, monkeypatch):
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(checkpoint)))
            self.end_headers()
            self.wfile.write(checkpoint[:100])
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv(env_var(NAME), f"http://127.0.0.1:{httpd.server_address[1]}/{FILE_NAME}")
        with pytest.raises(RunFailure) as info:
            hub.resolve_weights(NAME, cache_dir=tmp_path, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert "\n" not in str(info.value)
    assert all_files(tmp_path / "downloads") == []


def test_concurrent_first_use_keeps_the_finished_copy(entry, server, tmp_path, monkeypatch):
    """Another process renames its conversion into place while this one converts: this one uses that copy."""
    from jsr import convert

    cache = tmp_path / "cache"
    monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
    real = convert.convert_file
    model_dir = cache.absolute() / "models" / NAME

    def racing(*args, **kwargs):
        out = real(*args, **kwargs)
        shutil.copytree(out, model_dir)  # the other process, finishing first
        (model_dir / "other").write_text("the other process's copy")
        return out

    monkeypatch.setattr(convert, "convert_file", racing)
    assert hub.resolve_weights(NAME, cache_dir=cache, progress=False) == model_dir
    assert (model_dir / "other").is_file()
    assert sorted(p.name for p in (cache / "models").iterdir()) == [NAME]  # our staging copy is gone


def test_stale_conversion_is_replaced(entry, checkpoint, server, tmp_path, monkeypatch):
    """A model directory converted from another file (an older pin) is converted again from the pinned one."""
    from jsr.checkpoints import read_description

    cache = tmp_path / "cache"
    monkeypatch.setenv(env_var(NAME), f"{server.url}/{FILE_NAME}")
    out = hub.resolve_weights(NAME, cache_dir=cache, progress=False)
    description = (out / "jsr_model.json").read_text()
    (out / "jsr_model.json").write_text(description.replace(entry.sha256, "0" * 64))
    (cache / "downloads" / FILE_NAME).unlink()
    assert hub.resolve_weights(NAME, cache_dir=cache, progress=False) == out
    assert read_description(out)["source"]["sha256"] == entry.sha256 and len(server.hits) == 2


def test_real_entries_are_well_formed():
    assert len(hub.NAMED_WEIGHTS) >= 5
    for name, entry in hub.NAMED_WEIGHTS.items():
        assert entry.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), name
        parts = urllib.parse.urlsplit(entry.url)
        assert parts.scheme == "https" and parts.netloc, name
        assert urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]) == entry.file_name, name
        assert entry.scale in (1, 2, 3, 4, 8) and entry.description and entry.hash_source, name
        assert hub.lookup(name) is entry and hub.lookup(Path(entry.file_name).stem) is entry
    hashes = [entry.sha256 for entry in hub.NAMED_WEIGHTS.values()]
    assert len(set(hashes)) == len(hashes)
    for name in ("realesrgan-x4plus", "realesrgan-x2plus", "realesrgan-x4plus-anime-6b", "realesr-animevideov3"):
        assert hub.NAMED_WEIGHTS[name].url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
    with pytest.raises(ValueError):
        hub.NamedWeights("x", "https://a/x.pth", "abc", "x.pth", "", 4)


def test_import_is_light():
    code = "import sys, jsr.hub; assert 'jax' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[1], timeout=60)


@pytest.mark.referee
def test_referee_pth_through_the_hub(referee, tmp_path, monkeypatch):
    """A real Real-ESRGAN .pth (a re-zipped copy of realesr-animevideov3) downloads, verifies and converts."""
    from jsr.checkpoints import read_description

    source = referee / "checkpoints" / "Real-ESRGAN" / "realesr-animevideov3.pth"
    named = hub.NamedWeights(
        name="referee-animevideov3",
        url=source.as_uri(),
        sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        file_name=source.name,
        description="the referee copy",
        scale=4,
    )
    monkeypatch.setitem(hub.NAMED_WEIGHTS, named.name, named)
    server = Server({f"/{source.name}": source.read_bytes()})
    try:
        out = hub.resolve_weights(named.name, cache_dir=tmp_path, progress=False, base_url=server.url)
    finally:
        server.stop()
    assert read_description(out)["arch"] == "srvgg_compact" and len(server.hits) == 1
