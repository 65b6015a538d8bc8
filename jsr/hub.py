"""Named weights: released checkpoints of other projects, downloaded once, verified, converted and cached.

``resolve_weights("realesrgan-x4plus")`` downloads the publisher's file into the user cache (``$JSR_CACHE_DIR``, else
``$XDG_CACHE_HOME/jsr``, else ``~/.cache/jsr``) under ``downloads/<file_name>``, checks it against the sha256 pinned
here, converts it with ``jsr.convert.convert_file`` and keeps the model directory under ``models/<name>/``; later
calls return that directory without touching the network. A path that exists is returned as it is, so every
``--weights`` can take a directory or a name.

- The download streams into a hidden staging file beside its target (``jsr.atomic`` naming) while the sha256 is
  computed; only a file with the pinned hash is renamed into place. A mismatch removes the staging file and is one
  error line (exit 2) with both hashes; a network failure is one line (exit 1) naming the URL and the reason.
- The conversion is written to a staging directory and renamed into place; a second process that finds the
  directory complete (first use racing in two terminals) uses it and discards its own copy.
- ``JSR_HUB_URL_<NAME>`` (the name upper-cased, ``-`` as ``_``) replaces one entry's URL, ``JSR_HUB_BASE_URL`` (or
  ``base_url=``) every entry's folder (a mirror holding the files under their own names).

Every hash below was published by others (the source is in each entry's ``hash_source``); an entry whose hash no
citable source gives is left out rather than guessed. This module imports no JAX: only a conversion does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jsr import atomic
from jsr.errors import RunFailure, UserError, run_cli

MODEL_FILE = "jsr_model.json"  # jsr.checkpoints.MODEL_FILE (not imported: that module imports JAX)
CHUNK = 1 << 20
TIMEOUT_S = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UnknownWeights(UserError):
    """Neither an existing path nor a known name."""


class HashMismatch(UserError):
    """The downloaded bytes are not the pinned file."""


class DownloadError(RunFailure):
    """The file could not be fetched (network, HTTP status, truncated transfer)."""


@dataclasses.dataclass(frozen=True)
class NamedWeights:
    """One released checkpoint: where it is, what it must hash to, and how to convert it.

    ``model`` and ``convert_scale`` are passed to ``convert_file`` as ``kind`` and ``scale`` (for layouts whose
    architecture or scale the tensors do not tell); ``size`` (bytes) sizes the progress bar when the server does not.
    """

    name: str
    url: str
    sha256: str
    file_name: str
    description: str
    scale: int
    size: int | None = None
    model: str | None = None
    convert_scale: int | None = None
    hash_source: str = ""

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.file_name or "/" in self.file_name or self.file_name.startswith("."):
            raise ValueError(f"{self.name}: bad file name {self.file_name!r}")
        if urllib.parse.urlsplit(self.url).scheme not in ("https", "http", "file"):
            raise ValueError(f"{self.name}: unsupported URL {self.url!r}")

    def convert_arguments(self) -> dict:
        return {"kind": self.model, "scale": self.convert_scale}


_REAL_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
# The AUR package realesrgan-model (archlinux/aur, PKGBUILD of python-realesrgan 0.3.0) pins the sha256 of every
# Real-ESRGAN release file below (makepkg refuses any other bytes); other projects' download manifests on GitHub
# pin the same hashes and sizes. (shared/referee's realesr-animevideov3.pth is a re-zipped copy, 2,334,339 bytes:
# its tensors, not its bytes, are the release's.)
_AUR = "archlinux/aur PKGBUILD of python-realesrgan 0.3.0, sha256sums"


def _entries() -> list[NamedWeights]:
    real_esrgan = [
        ("realesrgan-x4plus", "v0.1.0", "RealESRGAN_x4plus.pth", 4, 67040989,
         "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
         "Real-ESRGAN x4plus: RRDBNet 23 blocks, x4, general photos"),
        ("realesrgan-x2plus", "v0.2.1", "RealESRGAN_x2plus.pth", 2, 67061725,
         "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
         "Real-ESRGAN x2plus: RRDBNet 23 blocks, x2 (pixel-unshuffled input), general photos"),
        ("realesrgan-x4plus-anime-6b", "v0.2.2.4", "RealESRGAN_x4plus_anime_6B.pth", 4, 17938799,
         "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
         "Real-ESRGAN x4plus anime: RRDBNet 6 blocks, x4, anime illustrations"),
        ("realesrnet-x4plus", "v0.1.1", "RealESRNet_x4plus.pth", 4, None,
         "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df",
         "Real-ESRNet x4plus: RRDBNet 23 blocks, x4, the PSNR-oriented stage before GAN fine-tuning"),
        ("realesr-animevideov3", "v0.2.5.0", "realesr-animevideov3.pth", 4, 2504012,
         "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
         "Real-ESRGAN AnimeVideo-v3: SRVGGNetCompact 16 convs, x4, anime video (fast)"),
        ("realesr-general-x4v3", "v0.2.5.0", "realesr-general-x4v3.pth", 4, 4885111,
         "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
         "Real-ESRGAN general v3: SRVGGNetCompact 32 convs, x4, general photos (fast)"),
        ("realesr-general-wdn-x4v3", "v0.2.5.0", "realesr-general-wdn-x4v3.pth", 4, 4885111,
         "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
         "Real-ESRGAN general v3, weak denoising: SRVGGNetCompact 32 convs, x4"),
    ]  # fmt: skip
    entries = [
        NamedWeights(
            name=name,
            url=f"{_REAL_ESRGAN}/{tag}/{file_name}",
            sha256=digest,
            file_name=file_name,
            description=description,
            scale=scale,
            size=size,
            hash_source=_AUR,
        )
        for name, tag, file_name, scale, size, digest, description in real_esrgan
    ]
    # PAN and IMDN keep their weights in git: raw files at a fixed commit never change. Hashes: the byte-for-byte
    # copies in shared/referee (MANIFEST.md names each repository and commit; SHA256SUMS).
    for scale, digest in (
        (2, "fcf8ed48656abbaae46309ee91745684b80235a9c8b37a2d8fb0715a3ad3f00f"),
        (3, "86491751d73645a8816a0d6ec62ccde6b22ce5da930e36b3b87f5437167fbc89"),
        (4, "739fab99ee7b7058dab4d1b84aa2869bb9fc3995a1c08789c20355bee943833c"),
    ):
        file_name = f"PANx{scale}_DF2K.pth"
        entries.append(
            NamedWeights(
                name=f"pan-x{scale}",
                url="https://raw.githubusercontent.com/zhaohengyuan1/PAN/a20974545cf011c386d728739d091c39e23d0686/"
                f"experiments/pretrained_models/{file_name}",
                sha256=digest,
                file_name=file_name,
                description=f"PAN (pixel attention network, Zhao et al. 2020), x{scale}, trained on DF2K",
                scale=scale,
                convert_scale=scale,  # x2 and x3 have the same shapes
                hash_source="shared/referee SHA256SUMS of its copy of zhaohengyuan1/PAN experiments/pretrained_models",
            )
        )
    for scale, digest in (
        (2, "740b39653592bd3f49955a21cd9e16f2d37f2c413368cc09327601b8fbe42ce1"),
        (3, "11b1716a19bc16e5e353e1db798d476169338e631eb170c82d765559888cb028"),
        (4, "e660c38221147217a136debeb99eb304d62d9c0f73ac421ed66281b619719714"),
    ):
        file_name = f"IMDN_x{scale}.pth"
        entries.append(
            NamedWeights(
                name=f"imdn-x{scale}",
                url="https://raw.githubusercontent.com/Zheng222/IMDN/f8a43074c7c8ea33ea7c33ce43a698c086007fd0/"
                f"checkpoints/{file_name}",
                sha256=digest,
                file_name=file_name,
                description=f"IMDN (information multi-distillation network), x{scale}",
                scale=scale,
                hash_source="shared/referee SHA256SUMS of its copy of Zheng222/IMDN checkpoints",
            )
        )
    return entries


NAMED_WEIGHTS: dict[str, NamedWeights] = {entry.name: entry for entry in _entries()}


# ------------------------------------------------------------------------------------------------ lookup


def cache_root() -> Path:
    """``$JSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/jsr``, else ``~/.cache/jsr`` (empty variables count as unset)."""
    if os.environ.get("JSR_CACHE_DIR"):
        return Path(os.environ["JSR_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jsr"
    return Path.home() / ".cache" / "jsr"


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def lookup(spec: str) -> NamedWeights | None:
    """The entry named ``spec`` (case and ``_``/``-`` ignored; a release file's name or stem works too)."""
    key = _normal(spec)
    for entry in NAMED_WEIGHTS.values():
        if key in (_normal(entry.name), _normal(entry.file_name), _normal(Path(entry.file_name).stem)):
            return entry
    return None


def known_names() -> list[str]:
    return sorted(NAMED_WEIGHTS)


def weights_help() -> str:
    """For a ``--weights`` option's help text."""
    return (
        "model directory (converted weights or a training workdir), or a named release downloaded once into "
        f"{cache_root()} (JSR_CACHE_DIR): {', '.join(known_names())}"
    )


def url_of(entry: NamedWeights, base_url: str | None = None) -> str:
    """``base_url`` (argument) > ``JSR_HUB_URL_<NAME>`` > ``JSR_HUB_BASE_URL`` > the publisher's URL."""
    if base_url:
        return f"{base_url.rstrip('/')}/{urllib.parse.quote(entry.file_name)}"
    own = os.environ.get("JSR_HUB_URL_" + re.sub(r"[^0-9A-Za-z]", "_", entry.name).upper())
    if own:
        return own
    mirror = os.environ.get("JSR_HUB_BASE_URL")
    if mirror:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.file_name)}"
    return entry.url


def resolve_weights(
    spec: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """``spec`` itself when it exists, else the converted model directory of the named weights ``spec``
    (downloaded, verified and converted on first use; offline afterwards)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    entry = lookup(str(spec))
    if entry is None:
        raise UnknownWeights(
            f"{spec} does not exist, and is not a known weights name; known names: {', '.join(known_names())}"
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    model_dir = root.absolute() / "models" / entry.name
    atomic.heal(model_dir)
    if _converted_from(model_dir) == entry.sha256:
        return model_dir
    raw = fetch(entry, root, progress=progress, base_url=base_url)
    return _convert(entry, raw, model_dir)


# ---------------------------------------------------------------------------------------------- download


def fetch(
    entry: NamedWeights, cache_dir: str | os.PathLike | None = None, progress: bool = True, base_url: str | None = None
) -> Path:
    """``downloads/<file_name>`` with the pinned sha256: the cached copy if it verifies, else a fresh download."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root.absolute() / "downloads" / entry.file_name
    atomic.heal(target)
    if target.is_file():
        if _sha256_file(target) == entry.sha256:
            return target
        target.unlink()  # damaged or replaced by hand: fetch it again
    url = url_of(entry, base_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.{atomic.PARTIAL}-{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _download(entry, url, out, progress)
            out.flush()
            os.fsync(out.fileno())
        if actual != entry.sha256:
            raise HashMismatch(
                f"{entry.name}: the file downloaded from {url} has sha256 {actual}, but jsr pins {entry.sha256}: it "
                "is damaged or not the published file, and was deleted; run again to retry, or fetch it yourself, "
                "check it, and convert it with jsr-convert"
            )
        os.chmod(staging, 0o666 & ~atomic.current_umask())
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def _download(entry: NamedWeights, url: str, out, progress: bool) -> str:
    """Stream ``url`` into ``out``; returns the sha256 of what was received."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "jsr-hub"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else entry.size
            with tqdm(
                total=total,
                desc=f"downloading {entry.file_name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar:
                received = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {entry.name} from {url}: HTTP {e.code} {_one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot download {entry.name} from {url}: {_one_line(e.reason)}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = _one_line(e) or type(e).__name__
        raise DownloadError(f"cannot download {entry.name} from {url}: {reason}") from None
    if length and length.isdigit() and received != int(length):
        raise DownloadError(
            f"cannot download {entry.name} from {url}: the transfer ended after {received} of {length} bytes"
        )
    return digest.hexdigest()


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- conversion


def _converted_from(model_dir: Path) -> str | None:
    """The sha256 of the file a complete model directory was converted from (``jsr_model.json``), or None."""
    try:
        description = json.loads((model_dir / MODEL_FILE).read_text(encoding="utf-8"))
        digest = description["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) and (model_dir / "variables").is_dir() else None


def _convert(entry: NamedWeights, raw: Path, model_dir: Path) -> Path:
    """Convert ``raw`` beside ``model_dir`` and rename it into place (or use a copy another process finished)."""
    from jsr import convert

    staging = atomic.staging_dir(model_dir)
    try:
        try:
            convert.convert_file(**entry.convert_arguments(), input_path=raw, output_dir=staging, overwrite=True)
        except UserError as e:
            raise type(e)(f"{entry.name}: {raw} was downloaded and verified, but does not convert: {e}") from None
        if _converted_from(model_dir) == entry.sha256:
            return model_dir  # another process finished first: its copy is the same conversion
        if model_dir.exists():
            atomic.replace_dir(staging, model_dir)  # a stale conversion (another pinned file): replaced whole
        else:
            try:
                os.rename(staging, model_dir)
            except OSError:
                if _converted_from(model_dir) != entry.sha256:
                    raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return model_dir


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jsr.hub",
        description="List the named weights, or download, verify and convert some now (as first use would).",
    )
    parser.add_argument("names", nargs="*", help="names to fetch (default: list them all)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {cache_root()} (JSR_CACHE_DIR)")
    args = parser.parse_args(argv)

    def run() -> int:
        root = args.cache_dir or cache_root()
        if not args.names:
            for name in known_names():
                entry = NAMED_WEIGHTS[name]
                ready = _converted_from(root.absolute() / "models" / name) == entry.sha256
                print(f"{name:28s} x{entry.scale}  {'cached ' if ready else '       '} {entry.description}")
            return 0
        for name in args.names:
            print(resolve_weights(name, cache_dir=root))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
