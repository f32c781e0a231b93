"""Named public datasets: download (resume, restart, checksum), safe extraction, the cache.

A real HTTP server on 127.0.0.1, started here, serves an archive made here: nothing reaches the
network, and the download code runs unmocked.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from npubuild import datasets
from npubuild.errors import BuildError
from npubuild.kinds.kws import recordings

from .conftest import ROOT
from .test_kws_data import RECIPE, write_wav

CUT_AT = 20_000


class Server:
    """Serves one payload at /data.tar.gz. `cuts[i]`: close request i's connection after that many body
    bytes; `ranges`: whether Range requests are honoured (206) or ignored (200). Records each request's
    Range header (None when it had none)."""

    def __init__(self, payload: bytes, cuts: dict[int, int] | None = None, ranges: bool = True) -> None:
        self.payload, self.cuts, self.ranges = payload, cuts or {}, ranges
        self.requests: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                index = len(owner.requests)
                asked = self.headers.get("Range")
                owner.requests.append(asked)
                body, start = owner.payload, 0
                if asked and owner.ranges:
                    start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes" if owner.ranges else "none")
                self.end_headers()
                self.wfile.write(body[start:start + owner.cuts.get(index, len(body))])
                # HTTP/1.0: the connection closes here, cut or not

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def speech_commands_archive(tmp_path: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """A small Speech Commands v0.02-like tar.gz: members at its root ("./yes/..."), as the real one."""
    rng = np.random.default_rng(9)
    src = tmp_path / "src"
    for word in (*RECIPE.keywords, "bird"):
        for speaker in ("0a7c2a8d", "c9b5ff26"):
            write_wav(src / word / f"{speaker}_nohash_0.wav", rng.uniform(-0.3, 0.3, 1600))
    write_wav(src / "_background_noise_" / "white_noise.wav", rng.uniform(-0.5, 0.5, 32000))
    (src / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_0.wav\n")
    (src / "testing_list.txt").write_text("".join(f"{w}/c9b5ff26_nohash_0.wav\n" for w in (*RECIPE.keywords, "bird")))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname=".")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def archive(tmp_path):
    return speech_commands_archive(tmp_path)


@pytest.fixture
def serve():
    servers = []

    def start(payload: bytes, **kwargs) -> Server:
        servers.append(Server(payload, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def entry_for(server: Server, payload: bytes, **changes) -> datasets.PublicDataset:
    """The speech-commands registry entry pointed at the local server and this payload."""
    pinned = {"name": "sc-test", "url": server.url, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    return replace(datasets.DATASETS["speech-commands"], **{**pinned, **changes})


def fetch(entry, cache: Path, lines: list[str] | None = None, **kwargs) -> Path:
    kwargs = {"attempts": 3, "retry_wait": 0.0, "progress_every": 0.0, "tty": False, **kwargs}
    return datasets.fetch_dataset(entry, cache, (lines if lines is not None else []).append, **kwargs)


def test_registry_pins_the_published_archive():
    sc = datasets.known_dataset("speech-commands")
    assert sc.url == "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert sc.sha256 == "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
    assert sc.size == 2_428_923_189 and sc.archive == "tar.gz" and "CC BY 4.0" in sc.licence
    for entry in datasets.DATASETS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.checksum_source
    with pytest.raises(BuildError, match=r"^unknown dataset 'speech' \(known: speech-commands\)$"):
        datasets.known_dataset("speech")


def test_full_download_is_verified_extracted_and_read_as_a_data_dir(tmp_path, archive, serve):
    server = serve(archive)
    lines: list[str] = []
    data = fetch(entry_for(server, archive), tmp_path / "cache", lines)
    assert data == tmp_path / "cache" / "datasets" / "sc-test" / "speech_commands_v0.02"
    assert server.requests == [None]
    assert (data / "yes" / "0a7c2a8d_nohash_0.wav").is_file() and (data / "_background_noise_").is_dir()
    assert (data / datasets.MARKER).read_text() == hashlib.sha256(archive).hexdigest() + "\n"
    assert sorted(p.name for p in data.parent.iterdir()) == [".lock", "speech_commands_v0.02"]  # archive removed
    assert any("CC BY 4.0" in line for line in lines) and lines[-1] == f"sc-test: ready in {data}"
    assert any(re.fullmatch(r"  data\.tar\.gz: [\d.,]+ / [\d.,]+ MiB \(100%\)", line) for line in lines)
    # what --data-dir reads: the Speech Commands folder with its lists
    split = recordings.speech_commands_dataset(RECIPE, data).splits
    assert [RECIPE.labels[i] for i in split["val"][1]] == ["yes", "_silence_"]


def test_cut_connection_is_resumed_with_a_range_request(tmp_path, archive, serve):
    server = serve(archive, cuts={0: CUT_AT})
    lines: list[str] = []
    path = datasets.download_archive(entry_for(server, archive), tmp_path, lines.append, attempts=3,
                                     retry_wait=0.0, progress_every=0.0, tty=False)
    assert server.requests == [None, f"bytes={CUT_AT}-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(archive).hexdigest()
    assert any(f"connection lost at {CUT_AT:,} bytes" in line for line in lines)
    assert not path.with_name(path.name + ".part").exists()


def test_cut_download_is_resumed_by_the_next_command(tmp_path, archive, serve):
    server = serve(archive, cuts={0: CUT_AT})
    entry = entry_for(server, archive)
    with pytest.raises(BuildError) as err:
        fetch(entry, tmp_path, attempts=1)
    part = tmp_path / "datasets" / "sc-test" / "data.tar.gz.part"
    assert str(err.value) == (f"{server.url}: download stopped at {CUT_AT:,} of {len(archive):,} bytes (the server "
                              f"sent {CUT_AT:,} of {len(archive):,} bytes) after 1 attempts; {part} is kept: run "
                              f"the same command again to resume")
    assert part.stat().st_size == CUT_AT
    data = fetch(entry, tmp_path)
    assert server.requests == [None, f"bytes={CUT_AT}-"] and datasets.is_extracted(data, entry.sha256)


def test_server_ignoring_range_restarts_cleanly(tmp_path, archive, serve):
    server = serve(archive, cuts={0: CUT_AT}, ranges=False)
    lines: list[str] = []
    path = datasets.download_archive(entry_for(server, archive), tmp_path, lines.append, attempts=3,
                                     retry_wait=0.0, progress_every=0.0, tty=False)
    assert server.requests == [None, f"bytes={CUT_AT}-"]  # asked to resume, answered 200 with the whole file
    assert path.read_bytes() == archive
    assert any("does not resume (HTTP 200 to a Range request); starting again from byte 0" in line for line in lines)


def test_wrong_checksum_is_refused_in_one_line_and_nothing_extracted(tmp_path, archive, serve):
    server = serve(archive)
    wrong = "0" * 64
    with pytest.raises(BuildError) as err:
        fetch(entry_for(server, archive, sha256=wrong), tmp_path)
    folder = tmp_path / "datasets" / "sc-test"
    actual = hashlib.sha256(archive).hexdigest()
    assert str(err.value) == (f"{folder / 'data.tar.gz'}: sha256 {actual} is not the pinned {wrong}; not used "
                              f"(kept as data.tar.gz.bad; delete it and run again to download anew)")
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "data.tar.gz.bad"]


def test_entry_without_a_pinned_checksum_is_refused_before_any_request(tmp_path, archive, serve):
    server = serve(archive)
    with pytest.raises(BuildError, match=r"no published sha256 is pinned .* refusing to use an archive that cannot "
                                         r"be verified"):
        fetch(entry_for(server, archive, sha256=""), tmp_path)
    assert server.requests == [] and not (tmp_path / "datasets").exists()


@pytest.mark.parametrize("member", ["../evil", "ABSOLUTE", "yes/../../evil"])
def test_archive_with_an_unsafe_path_is_refused(tmp_path, serve, member):
    outside = tmp_path / "outside" / "evil"
    member = str(outside) if member == "ABSOLUTE" else member  # an absolute path, under this test's folder
    payload = speech_commands_archive(tmp_path, extra={member: b"owned"})
    server = serve(payload)
    with pytest.raises(BuildError) as err:
        fetch(entry_for(server, payload), tmp_path / "cache")
    archive = tmp_path / "cache" / "datasets" / "sc-test" / "data.tar.gz"
    assert str(err.value) == (f"{archive}: unsafe member path {member!r} (absolute, or with '..'); nothing kept")
    assert sorted(p.name for p in archive.parent.iterdir()) == [".lock", "data.tar.gz"]  # no folder, no temporary
    assert not any(p.name == "evil" for p in tmp_path.rglob("*")) and not outside.exists()


def test_link_out_of_the_folder_is_refused(tmp_path, serve):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        info = tarfile.TarInfo("yes/link.wav")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    payload = payload.getvalue()
    with pytest.raises(BuildError, match=r"data\.tar\.gz: unsafe member 'yes/link\.wav' \(AbsoluteLinkError\); "
                                         r"nothing kept$"):
        fetch(entry_for(serve(payload), payload), tmp_path)
    assert not (tmp_path / "datasets" / "sc-test" / "speech_commands_v0.02").exists()


def test_interrupted_extraction_is_never_used(tmp_path, archive, serve):
    server = serve(archive)
    entry = entry_for(server, archive)
    data = datasets.dataset_folder(entry, tmp_path)
    # what a killed extraction leaves: a temporary folder beside the target, and (older tools) a folder
    # without the marker
    stale = data.parent / ".speech_commands_v0.02.k1ll3d.extracting"
    (stale / "yes").mkdir(parents=True)
    (stale / "yes" / "half.wav").write_bytes(b"RIFF")
    (data / "yes").mkdir(parents=True)
    assert not datasets.is_extracted(data, entry.sha256)
    with pytest.raises(BuildError, match="is not downloaded yet"):
        datasets.data_dir_for("speech-commands", None, tmp_path, fetch_missing=False)
    assert fetch(entry, tmp_path) == data
    assert server.requests == [None] and datasets.is_extracted(data, entry.sha256)
    assert not stale.exists() and not (data / "yes" / "half.wav").exists()
    assert sorted(p.name for p in data.parent.iterdir()) == [".lock", "speech_commands_v0.02"]


def test_verified_archive_left_by_an_interrupted_extraction_is_checked_and_used(tmp_path, archive, serve):
    server = serve(archive)
    entry = entry_for(server, archive)
    folder = tmp_path / "datasets" / "sc-test"
    folder.mkdir(parents=True)
    (folder / "data.tar.gz").write_bytes(archive)
    assert datasets.is_extracted(fetch(entry, tmp_path), entry.sha256) and server.requests == []
    (folder / "data.tar.gz").write_bytes(archive[:-1] + b"x")  # damaged since: checked again, refused
    with pytest.raises(BuildError, match=r"data\.tar\.gz: sha256 [0-9a-f]{64} is not the pinned"):
        datasets.download_archive(entry, folder, lambda s: None)


def test_second_call_with_everything_in_place_makes_no_request(tmp_path, archive, serve, monkeypatch):
    server = serve(archive)
    entry = entry_for(server, archive)
    monkeypatch.setenv("NPUBUILD_CACHE", str(tmp_path / "env-cache"))
    first = fetch(entry, None)
    assert first.is_relative_to(tmp_path / "env-cache") and server.requests == [None]
    lines: list[str] = []
    assert fetch(entry, None, lines) == first
    assert server.requests == [None] and lines == []


def test_dataset_and_data_dir_together_and_dry_run_through_invoke(tmp_path):
    with pytest.raises(BuildError, match=r"^--dataset speech-commands and --data-dir .* name two sources"):
        datasets.data_dir_for("speech-commands", tmp_path, tmp_path)
    assert datasets.data_dir_for(None, tmp_path) == tmp_path
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--model", "kws", "--profile", "smoke",
                           "--dataset", "speech-commands", "--cache-dir", str(tmp_path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True)
    folder = tmp_path / "datasets" / "speech-commands" / "speech_commands_v0.02"
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {folder}: speech-commands is not downloaded yet (a dry run downloads "
                                   f"nothing); run invoke data --dataset speech-commands")
