"""Prompts: the default English set spoken by espeak-ng, and each tenant's own recordings.

Layout under the node's data directory:

    prompts/default/en/<name>.wav       generated (``hivepbx prompts build``, or on first start)
    prompts/tenant/<tenant_id>/<name>.wav   uploaded by a tenant; wins over the default

A prompt is looked up by name, the tenant's first: a tenant replaces "welcome" by uploading
a file of that name, and can never read another tenant's (names are plain words, never
paths; the tenant part of the path is the numeric id the node resolved, not user input).
Every stored file is 8 kHz mono 16-bit WAV: uploads in any format sox reads are converted.

Generating takes espeak-ng a fraction of a second per prompt; so that every fresh data
directory (each test's node, a new install) does not pay it again, generated sets are kept
in a per-user cache keyed by the texts and voice, and copied from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from node.media.wav import WavFormatError, read_wav

log = logging.getLogger("hivepbx.prompts")

VOICE = "en-us"
SPEED = 150  # words per minute: a little slower than espeak's default, for phone lines
#: the default English prompts: name → text
DEFAULT_PROMPTS: dict[str, str] = {
    "welcome": "Welcome. Thank you for calling.",
    "menu": "Please enter the extension you wish to reach, or stay on the line for the operator.",
    "invalid": "That is not a valid option. Please try again.",
    "no-input": "We did not receive your selection.",
    "transferring": "Please hold while we connect your call.",
    "unavailable": "The person you are calling is not available. Please try again later.",
    "goodbye": "Thank you for calling. Goodbye.",
    "closed": "Our office is now closed. Please call again during business hours.",
    "hold": "Please hold. Your call is important to us.",
    "conf-pin": "Please enter the conference PIN, followed by the pound key.",
    "conf-bad-pin": "That PIN is not valid.",
    "conf-full": "This conference is full. Please try again later.",
    "dir-intro": "Please enter the first three letters of the person's name.",
    "dir-none": "No name matches those letters.",
    "dir-choose": "To call this person, press 1. For the next name, press 2.",
}

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")


class PromptError(ValueError):
    """A prompt name, upload or build problem, with a message for the operator."""


def prompt_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PromptError(f"prompt name {name!r}: use 1-64 lower-case letters, digits, '-' or '_'")
    return name


def _tools() -> tuple[str, str]:
    espeak = shutil.which("espeak-ng")
    sox = shutil.which("sox")
    if not espeak or not sox:
        raise PromptError("building prompts needs espeak-ng and sox (Debian: apt-get install espeak-ng sox)")
    return espeak, sox


def _cache_key(prompts: dict[str, str]) -> str:
    blob = json.dumps({"voice": VOICE, "speed": SPEED, "prompts": prompts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hivepbx" / "prompts"


def convert(src: str | Path, dst: str | Path) -> None:
    """Any audio file sox reads → 8 kHz mono 16-bit WAV at ``dst`` (atomically)."""
    _, sox = _tools()
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part.wav")
    r = subprocess.run([sox, "-q", str(src), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(tmp)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PromptError(f"cannot convert {src}: {r.stderr.strip() or 'sox failed'}")
    tmp.replace(dst)


def synthesize(text: str, dst: str | Path) -> None:
    """Speak ``text`` into ``dst`` (8 kHz mono 16-bit WAV, peak-normalised to -3 dBFS)."""
    espeak, sox = _tools()
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="hivepbx-tts-") as tmp:
        raw = Path(tmp) / "tts.wav"
        r = subprocess.run([espeak, "-v", VOICE, "-s", str(SPEED), "-w", str(raw), text],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or not raw.exists():
            raise PromptError(f"espeak-ng failed: {r.stderr.strip()}")
        out = Path(tmp) / "out.wav"
        r = subprocess.run([sox, "-q", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                            str(out), "norm", "-3"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise PromptError(f"sox failed: {r.stderr.strip()}")
        shutil.move(str(out), dst)


def build_defaults(dest: str | Path, prompts: dict[str, str] | None = None, *, force: bool = False) -> list[str]:
    """Make sure ``dest`` holds every default prompt; returns the names written. Uses (and
    fills) the per-user cache, so only the first build on a machine runs espeak-ng."""
    prompts = DEFAULT_PROMPTS if prompts is None else prompts
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    missing = [n for n in prompts if force or not (dest / f"{n}.wav").exists()]
    if not missing:
        return []
    cache = _cache_dir() / _cache_key(prompts)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.mkdtemp(prefix="hivepbx-prompts-"))
    for name in missing:
        cached = cache / f"{name}.wav"
        if force or not cached.exists():
            tmp = cache / f".{name}.{os.getpid()}.wav"
            synthesize(prompts[name], tmp)
            tmp.replace(cached)
        part = dest / f".{name}.part.wav"
        shutil.copyfile(cached, part)
        part.replace(dest / f"{name}.wav")
    return missing


class PromptLibrary:
    """Where a tenant's prompt is. All methods are blocking file operations (small ones);
    the node calls the slow ones (``build``, ``upload``) in a thread."""

    def __init__(self, data_dir: str | Path, language: str = "en") -> None:
        self.root = Path(data_dir) / "prompts"
        self.default_dir = self.root / "default" / language

    def tenant_dir(self, tenant_id: int) -> Path:
        if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or tenant_id < 0:
            raise PromptError(f"bad tenant id {tenant_id!r}")
        return self.root / "tenant" / str(tenant_id)

    def path(self, tenant_id: int, name: str) -> Path | None:
        """The tenant's recording of ``name``, else the default one, else None."""
        name = prompt_name(name)
        own = self.tenant_dir(tenant_id) / f"{name}.wav"
        if own.exists():
            return own
        default = self.default_dir / f"{name}.wav"
        return default if default.exists() else None

    def build(self, *, force: bool = False) -> list[str]:
        return build_defaults(self.default_dir, force=force)

    def missing_defaults(self) -> list[str]:
        return [n for n in DEFAULT_PROMPTS if not (self.default_dir / f"{n}.wav").exists()]

    def upload(self, tenant_id: int, name: str, src: str | Path) -> Path:
        """Store ``src`` (any format sox reads) as the tenant's ``name`` prompt."""
        name = prompt_name(name)
        if not Path(src).is_file():
            raise PromptError(f"no such file: {src}")
        d = self.tenant_dir(tenant_id)
        d.mkdir(parents=True, exist_ok=True)
        dst = d / f"{name}.wav"
        convert(src, dst)
        try:
            if len(read_wav(dst)) == 0:
                dst.unlink()
                raise PromptError(f"{src} holds no audio")
        except WavFormatError as e:
            dst.unlink(missing_ok=True)
            raise PromptError(str(e)) from None
        return dst

    def delete(self, tenant_id: int, name: str) -> bool:
        p = self.tenant_dir(tenant_id) / f"{prompt_name(name)}.wav"
        if p.exists():
            p.unlink()
            return True
        return False

    def list(self, tenant_id: int) -> dict[str, str]:
        """name → 'tenant' or 'default', for every prompt the tenant can use."""
        out = {p.stem: "default" for p in self.default_dir.glob("*.wav")}
        d = self.tenant_dir(tenant_id)
        if d.exists():
            out.update({p.stem: "tenant" for p in d.glob("*.wav") if _NAME.match(p.stem)})
        return dict(sorted(out.items()))
