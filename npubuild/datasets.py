"""Named public datasets: downloaded once into a cache folder, verified, extracted, then read as `--data-dir`.

The registry below pins each archive: URL, size, sha256 and where that sha256 was published. Nothing
unverified is ever used: an entry without a pinned sha256 is refused before any request, and an
archive whose sha256 differs is renamed `.bad` and refused. Steps, each safe to interrupt:

1. download to `<cache>/datasets/<name>/<archive>.part`, resuming with a Range request (a server that
   answers 200 instead of 206 is read again from the start); a cut connection is retried and resumed;
2. verify the sha256, then rename `.part` to the archive's name;
3. extract into a temporary folder beside the target, checking every member's path (no absolute path,
   no `..`; links and special files go through tarfile's `data` filter), write a marker file last,
   rename the folder into place, delete the archive.

A folder is used only when its marker names the pinned sha256, so a half-extracted folder never is.
Only `fetch_dataset` touches the network, and only for what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from npubuild.errors import BuildError

MARKER = ".npubuild-extracted"  # written last, inside the extracted folder: holds the archive's sha256
CHUNK = 1 << 20
TIMEOUT_S = 60
ATTEMPTS = 5
RETRY_WAIT_S = 3.0
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class PublicDataset:
    """One downloadable archive and the folder it becomes in the cache."""

    name: str  # what --dataset takes
    url: str
    sha256: str  # "" when no published value is known: such an entry is refused
    size: int  # bytes, as published (0: unknown)
    archive: str  # "tar.gz" (any compression tarfile reads)
    folder: str  # the folder the archive's contents are extracted to, in the cache
    licence: str
    checksum_source: str  # where the sha256 and size were published

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


DATASETS = {
    d.name: d for d in (
        PublicDataset(
            name="speech-commands",
            url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
            sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
            size=2_428_923_189,
            archive="tar.gz",
            folder="speech_commands_v0.02",  # the archive holds the word folders and lists at its root
            licence="Speech Commands v0.02 by Pete Warden (Google), CC BY 4.0 "
                    "(https://creativecommons.org/licenses/by/4.0/)",
            checksum_source="TensorFlow Datasets, tensorflow_datasets/url_checksums/speech_commands.txt "
                            "(the same sha256 is in torchaudio's SPEECHCOMMANDS)",
        ),
    )
}


def known_dataset(name: str) -> PublicDataset:
    if name not in DATASETS:
        raise BuildError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


def cache_root(cache_dir: Path | None = None) -> Path:
    """`cache_dir`, else $NPUBUILD_CACHE, else ~/.cache/npubuild."""
    env = os.environ.get("NPUBUILD_CACHE")
    root = cache_dir or (Path(env) if env else Path.home() / ".cache" / "npubuild")
    return root.expanduser().resolve()


def dataset_folder(entry: PublicDataset, cache_dir: Path | None = None) -> Path:
    """Where `entry`'s data is read from once fetched: <cache>/datasets/<name>/<folder>."""
    return cache_root(cache_dir) / "datasets" / entry.name / entry.folder


def is_extracted(folder: Path, sha256: str) -> bool:
    """True when `folder` was completely extracted from the archive with this sha256."""
    try:
        return (folder / MARKER).read_text().strip() == sha256
    except OSError:
        return False


def data_dir_for(dataset: str | None, data_dir: Path | None, cache_dir: Path | None = None, *,
                 fetch_missing: bool = True, log: Callable[[str], None] = print) -> Path | None:
    """The folder a build reads: `data_dir` as given, or the named dataset's folder in the cache,
    fetched first when missing (with `fetch_missing` false, as in a dry run, a missing one stops)."""
    if dataset is None:
        return data_dir
    if data_dir is not None:
        raise BuildError(f"--dataset {dataset} and --data-dir {data_dir} name two sources of data; give one")
    entry = known_dataset(dataset)
    folder = dataset_folder(entry, cache_dir)
    if not fetch_missing and not is_extracted(folder, entry.sha256):
        raise BuildError(f"{folder}: {entry.name} is not downloaded yet (a dry run downloads nothing); "
                         f"run invoke data --dataset {entry.name}")
    return fetch_dataset(entry, cache_dir, log)


def fetch_dataset(entry: PublicDataset, cache_dir: Path | None = None, log: Callable[[str], None] = print, *,
                  attempts: int = ATTEMPTS, retry_wait: float = RETRY_WAIT_S,
                  progress_every: float = PROGRESS_EVERY_S, tty: bool | None = None) -> Path:
    """`entry`'s extracted folder, downloading, verifying and extracting only what is missing: when the
    folder is complete, no request is made."""
    if not entry.sha256:
        raise BuildError(f"dataset {entry.name!r}: no published sha256 is pinned for {entry.url}; "
                         f"refusing to use an archive that cannot be verified (use --data-dir)")
    data = dataset_folder(entry, cache_dir)
    if is_extracted(data, entry.sha256):
        return data
    with _cache_lock(data.parent):
        if not is_extracted(data, entry.sha256):  # another process may have finished it meanwhile
            log(f"{entry.name}: {entry.licence}")
            archive = download_archive(entry, data.parent, log, attempts=attempts, retry_wait=retry_wait,
                                       progress_every=progress_every, tty=tty)
            extract_archive(archive, data, entry.sha256, log)
            archive.unlink()  # the extracted folder is the cache; the archive would double the space
    log(f"{entry.name}: ready in {data}")
    return data


# --------------------------------------------------------------------------- download


class _Cut(Exception):
    """The connection ended before the whole file arrived (retried, resuming)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download_archive(entry: PublicDataset, folder: Path, log: Callable[[str], None] = print, *,
                     attempts: int = ATTEMPTS, retry_wait: float = RETRY_WAIT_S,
                     progress_every: float = PROGRESS_EVERY_S, tty: bool | None = None) -> Path:
    """The verified archive `folder/<file>`: downloaded to `<file>.part` (resumed from what is there)
    unless already there, then checked against the pinned sha256."""
    archive = folder / entry.file_name
    part = archive.with_name(archive.name + ".part")
    if archive.is_file():
        _verify(archive, archive, entry.sha256)  # left by an interrupted extraction: checked again
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    progress = _Progress(entry.file_name, log, progress_every, sys.stderr.isatty() if tty is None else tty)
    for attempt in range(1, attempts + 1):
        try:
            _download_once(entry.url, part, entry.size, log, progress)
            break
        except _Cut as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                of = f"{entry.size:,}" if entry.size else "?"
                raise BuildError(f"{entry.url}: download stopped at {have:,} of {of} bytes ({e}) "
                                 f"after {attempts} attempts; {part} is kept: run the same command again to "
                                 f"resume") from None
            log(f"  {entry.file_name}: connection lost at {have:,} bytes ({e}); resuming "
                f"(attempt {attempt + 1} of {attempts})")
            time.sleep(retry_wait)
    log(f"  checking the sha256 of {part.name}")
    _verify(part, archive, entry.sha256)
    os.replace(part, archive)
    return archive


def _download_once(url: str, part: Path, size: int, log: Callable[[str], None], progress: _Progress) -> None:
    """One request: from the .part's size with a Range request (206: appended), or from the start (200)."""
    import http.client
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    if size and have >= size:
        if have == size:
            return  # complete: verified next
        part.unlink()  # longer than the file: not a prefix of it
        have = 0
    headers = {"User-Agent": "npubuild"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range lies beyond the file: the .part is no prefix of it
            part.unlink()
            raise _Cut("the server refused to resume from there; starting again") from None
        if e.code >= 500:
            raise _Cut(f"HTTP {e.code} {e.reason}") from None
        raise BuildError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Cut(str(getattr(e, "reason", None) or e)) from None
    with resp:
        if have and resp.status == 206:
            if _range_start(resp.headers.get("Content-Range", "")) != have:
                part.unlink()
                raise _Cut("the server resumed from another byte; starting again")
            mode = "ab"
        else:
            if have:
                log(f"  {url}: the server does not resume (HTTP {resp.status} to a Range request); "
                    f"starting again from byte 0")
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        end = have + int(length) if length and length.isdigit() else (size or None)
        log(f"  downloading {url} to {part}" + (f" from byte {have:,}" if have else ""))
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Cut(str(e) or type(e).__name__) from None
                    if not block:
                        break
                    f.write(block)
                    have += len(block)
                    progress.update(have, end or size)
        except OSError as e:
            raise BuildError(f"{part}: cannot write the download ({e.strerror})") from None
    progress.update(have, end or size, final=True)
    if end is not None and have < end:
        raise _Cut(f"the server sent {have:,} of {end:,} bytes")


def _range_start(content_range: str) -> int | None:
    """The first byte of a `Content-Range: bytes START-END/TOTAL` header."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _verify(path: Path, archive: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        bad = archive.with_name(archive.name + ".bad")
        os.replace(path, bad)
        raise BuildError(f"{archive}: sha256 {actual} is not the pinned {expected}; not used (kept as {bad.name}; "
                         f"delete it and run again to download anew)")


class _Progress:
    """bytes/total at most every `every` seconds: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, label: str, log: Callable[[str], None], every: float, tty: bool) -> None:
        self.label, self.log, self.every, self.tty = label, log, every, tty
        self.last = time.monotonic()

    def update(self, done: int, total: int | None, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        of = f" / {total / 2**20:,.1f} MiB ({100 * done / total:.0f}%)" if total else " MiB"
        line = f"  {self.label}: {done / 2**20:,.1f}{of}"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            self.log(line)


# --------------------------------------------------------------------------- extract


def extract_archive(archive: Path, folder: Path, sha256: str, log: Callable[[str], None] = print) -> None:
    """Extract `archive` into `folder`, never leaving a half-extracted `folder`: into a temporary folder
    beside it (stale ones from an interrupted run are removed first), the marker written last, renamed."""
    import tarfile

    parent = folder.parent
    filtered = hasattr(tarfile, "data_filter")  # Python 3.11.4+: links and special files are checked too
    for stale in parent.glob(f".{folder.name}.*.extracting"):
        shutil.rmtree(stale, ignore_errors=True)
    log(f"  extracting {archive.name} to {folder}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".extracting", dir=parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    _check_member(archive, member, filtered)
                    if filtered:
                        tar.extract(member, tmp, filter="data")
                    else:
                        tar.extract(member, tmp)
        except getattr(tarfile, "FilterError", ()) as e:  # () before Python 3.11.4: caught by _check_member
            raise BuildError(f"{archive}: unsafe member {e.tarinfo.name!r} ({type(e).__name__}); "
                             f"nothing kept") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, OSError) and e.filename:
                raise BuildError(f"{e.filename}: cannot extract ({e.strerror})") from None
            raise BuildError(f"{archive}: not a readable tar archive ({e})") from None
        (tmp / MARKER).write_text(sha256 + "\n")
        if folder.exists():  # an earlier folder without its marker: never used, replaced
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_member(archive: Path, member, filtered: bool) -> None:
    """Refuse a member that would land outside the folder; without tarfile's `data` filter, any link too."""
    name = member.name
    if name.startswith(("/", "\\")) or ".." in PurePosixPath(name).parts:
        raise BuildError(f"{archive}: unsafe member path {name!r} (absolute, or with '..'); nothing kept")
    if not filtered and not (member.isfile() or member.isdir()):
        raise BuildError(f"{archive}: member {name!r} is neither a file nor a folder; nothing kept")


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """One fetch at a time per dataset folder (an exclusive flock, dropped however the process ends)."""
    import fcntl

    path = folder / ".lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115 (held for the whole fetch)
    except OSError as e:
        raise BuildError(f"{folder}: cannot write the dataset cache ({e.strerror})") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"{path}: another npubuild is fetching this dataset; wait for it to finish") from None
        yield
