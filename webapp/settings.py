"""Web app configuration, read once from the environment (`WebSettings.from_env()`)."""
from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import default_cache_dir

log = logging.getLogger(__name__)


def _env(name: str, default, cast=str):
    """One environment variable, cast to the type of its default; unset or empty gives the default."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if cast is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return cast(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be a {_WORDS.get(cast, cast.__name__)}, got {raw.strip()!r}") from None


_WORDS = {int: "whole number", float: "number"}
_RATE = r"\s*\d+\s*(?:/|per)\s*(?:\d+\s*)?(?:second|minute|hour|day)s?\s*"
RATE_RE = re.compile(rf"{_RATE}(?:[;,]{_RATE})*")  # flask-limiter's notation, one limit or several


def load_secret_key(cache_dir: str) -> str:
    """Return the key stored in <cache_dir>/secret_key, creating it (mode 0600) on first use.

    When the file can be neither read nor created (read-only or unwritable cache), a key for this process
    only is returned with a warning: the server still starts, but sessions do not survive a restart."""
    path = Path(cache_dir) / "secret_key"
    try:
        return _read_or_create_key(path)
    except (OSError, UnicodeError) as exc:
        log.warning("cannot keep the session secret in %s (%s): using a temporary one, so sessions end when "
                    "the server restarts; set SECRET_KEY or make the folder writable", path,
                    getattr(exc, "strerror", None) or exc)
        return secrets.token_urlsafe(48)


def _read_or_create_key(path: Path) -> str:
    """The key in path, or a new one written there with owner-only permissions."""
    try:
        key = path.read_text(encoding="ascii").strip()
        if key:
            return key
        path.unlink()  # an empty file (e.g. a crash between create and write): make a new key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker won the race; use its key
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
    return key


@dataclass(frozen=True)
class WebSettings:
    """Everything the HTTP layer needs; the model itself is configured by RuntimeSettings."""

    host: str = "0.0.0.0"  # HOST: interface to listen on
    port: int = 7860  # PORT: TCP port to listen on
    threads: int = 16  # WEB_THREADS: waitress worker threads (keep above MAX_QUEUE + CONCURRENCY)
    secret_key: str = ""  # SECRET_KEY: signs the session cookie ("" = made once, kept in <HF_CACHE_DIR>/secret_key)
    max_upload_mb: int = 20  # MAX_UPLOAD_MB: largest accepted image upload (and request body), in MiB
    max_pixels: int = 50_000_000  # MAX_IMAGE_PIXELS: largest accepted image, width x height
    max_question_chars: int = 2000  # MAX_QUESTION_CHARS: longest question or message text
    max_phrases: int = 10  # MAX_PHRASES: most object phrases per grounding request
    max_phrase_chars: int = 100  # MAX_PHRASE_CHARS: longest object phrase
    max_new_tokens: int = 2048  # MAX_NEW_TOKENS_LIMIT: largest max_new_tokens / max_tokens a client may ask for
    max_turns: int = 20  # MAX_TURNS: questions per conversation before it must be restarted
    max_images: int = 4  # MAX_IMAGES_PER_SESSION: images per conversation
    session_ttl_s: int = 3600  # SESSION_TTL_S: a conversation is forgotten after this much idle time
    max_sessions: int = 200  # MAX_SESSIONS: conversations kept at once (least recently used dropped first)
    session_store_mb: int = 1024  # SESSION_STORE_MB: memory for the images kept in conversations
    result_ttl_s: int = 3600  # RESULT_TTL_S: grounding downloads expire after this many seconds
    max_results: int = 200  # MAX_RESULTS: grounding downloads kept at once (oldest dropped first)
    result_store_mb: int = 256  # RESULT_STORE_MB: memory for kept grounding downloads
    allow_remote_images: bool = False  # ALLOW_REMOTE_IMAGES: let clients pass http(s) image URLs (1 = yes)
    remote_timeout_s: float = 10.0  # REMOTE_IMAGE_TIMEOUT_S: time limit for fetching a remote image
    api_key: str = ""  # API_KEY: when set, /api and /v1 need "Authorization: Bearer <key>" or "X-API-Key"
    recent_requests: int = 20  # RECENT_REQUESTS: timings of this many recent requests shown on /status
    rate_limit: str = ""  # RATE_LIMIT: requests per client address on /api and /v1, e.g. "60/minute" ("" = off)

    @classmethod
    def from_env(cls, **overrides) -> "WebSettings":
        """Read every field from its environment variable; keyword arguments win."""
        env = {
            "host": _env("HOST", "0.0.0.0"),
            "port": _env("PORT", 7860, int),
            "threads": _env("WEB_THREADS", 16, int),
            "secret_key": _env("SECRET_KEY", ""),
            "max_upload_mb": _env("MAX_UPLOAD_MB", 20, int),
            "max_pixels": _env("MAX_IMAGE_PIXELS", 50_000_000, int),
            "max_question_chars": _env("MAX_QUESTION_CHARS", 2000, int),
            "max_phrases": _env("MAX_PHRASES", 10, int),
            "max_phrase_chars": _env("MAX_PHRASE_CHARS", 100, int),
            "max_new_tokens": _env("MAX_NEW_TOKENS_LIMIT", 2048, int),
            "max_turns": _env("MAX_TURNS", 20, int),
            "max_images": _env("MAX_IMAGES_PER_SESSION", 4, int),
            "session_ttl_s": _env("SESSION_TTL_S", 3600, int),
            "max_sessions": _env("MAX_SESSIONS", 200, int),
            "session_store_mb": _env("SESSION_STORE_MB", 1024, int),
            "result_ttl_s": _env("RESULT_TTL_S", 3600, int),
            "max_results": _env("MAX_RESULTS", 200, int),
            "result_store_mb": _env("RESULT_STORE_MB", 256, int),
            "allow_remote_images": _env("ALLOW_REMOTE_IMAGES", False, bool),
            "remote_timeout_s": _env("REMOTE_IMAGE_TIMEOUT_S", 10.0, float),
            "api_key": _env("API_KEY", ""),
            "recent_requests": _env("RECENT_REQUESTS", 20, int),
            "rate_limit": _env("RATE_LIMIT", ""),
        }
        env.update(overrides)
        if not env["secret_key"]:
            cache_dir = _env("HF_CACHE_DIR", "") or default_cache_dir()
            env["secret_key"] = load_secret_key(cache_dir)
        settings = cls(**env)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be between 1 and 65535, got {self.port}")
        for name in ("threads", "max_upload_mb", "max_pixels", "max_question_chars", "max_phrases",
                     "max_phrase_chars", "max_new_tokens", "max_turns", "max_images", "session_ttl_s",
                     "max_sessions", "session_store_mb", "result_ttl_s", "max_results", "result_store_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.rate_limit and not RATE_RE.fullmatch(self.rate_limit):
            raise ValueError(f'RATE_LIMIT must look like "60/minute" or "10/second; 200/hour", got {self.rate_limit!r}')

    @property
    def max_upload_bytes(self) -> int:
        """MAX_UPLOAD_MB in bytes."""
        return self.max_upload_mb * 2**20
