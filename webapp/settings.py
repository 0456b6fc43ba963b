"""Web app configuration, read once from the environment and `.env` (`WebSettings.from_env()`)."""
from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from runtime.config import read_env, setting
from runtime.settings import DEFAULT_CLIENT_SHARE, default_cache_dir

log = logging.getLogger(__name__)


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

    host: str = setting("HOST", "0.0.0.0")  # interface to listen on
    port: int = setting("PORT", 7860)  # TCP port to listen on
    threads: int = setting("WEB_THREADS", 16)  # waitress worker threads (keep above MAX_QUEUE + CONCURRENCY)
    # signs the session cookie ("" = made once, kept in <HF_CACHE_DIR>/secret_key)
    secret_key: str = setting("SECRET_KEY", "")
    max_upload_mb: int = setting("MAX_UPLOAD_MB", 20)  # largest accepted image upload (and request body), in MiB
    max_pixels: int = setting("MAX_IMAGE_PIXELS", 50_000_000)  # largest accepted image, width x height
    max_question_chars: int = setting("MAX_QUESTION_CHARS", 2000)  # longest question or message text
    max_phrases: int = setting("MAX_PHRASES", 10)  # most object phrases per grounding request
    max_phrase_chars: int = setting("MAX_PHRASE_CHARS", 100)  # longest object phrase
    # largest max_new_tokens / max_tokens a client may ask for
    max_new_tokens: int = setting("MAX_NEW_TOKENS_LIMIT", 2048)
    max_turns: int = setting("MAX_TURNS", 20)  # questions per conversation before it must be restarted
    max_images: int = setting("MAX_IMAGES_PER_SESSION", 4)  # images per conversation
    session_ttl_s: int = setting("SESSION_TTL_S", 3600)  # a conversation is forgotten after this much idle time
    max_sessions: int = setting("MAX_SESSIONS", 200)  # conversations kept at once (least recently used dropped first)
    session_store_mb: int = setting("SESSION_STORE_MB", 1024)  # memory for the images kept in conversations
    result_ttl_s: int = setting("RESULT_TTL_S", 3600)  # grounding downloads expire after this many seconds
    max_results: int = setting("MAX_RESULTS", 200)  # grounding downloads kept at once (oldest dropped first)
    result_store_mb: int = setting("RESULT_STORE_MB", 256)  # memory for kept grounding downloads
    # most of each store (conversations, downloads; prepared images in the runtime) one client may hold, in %
    client_share: int = setting("CLIENT_SHARE_PERCENT", DEFAULT_CLIENT_SHARE)
    image_workers: int = setting("IMAGE_WORKERS", 2)  # heavy image jobs (decoding, thumbnails, drawing) run at once
    image_queue: int = setting("IMAGE_QUEUE", 8)  # image jobs allowed to wait for a worker; more get "busy"
    allow_remote_images: bool = setting("ALLOW_REMOTE_IMAGES", False)  # let clients pass http(s) image URLs (1 = yes)
    remote_timeout_s: float = setting("REMOTE_IMAGE_TIMEOUT_S", 10.0)  # time limit for fetching a remote image
    # when set, /api and /v1 need "Authorization: Bearer <key>" or "X-API-Key", and the pages ask for it once
    api_key: str = setting("API_KEY", "")
    # with API_KEY set, leave the pages open to anyone (they run the model too: only on a trusted network)
    public_pages: bool = setting("PUBLIC_PAGES", False)
    # reverse proxies in front whose X-Forwarded-For / -Proto are believed (real client address, Secure cookie)
    trusted_proxies: int = setting("TRUSTED_PROXIES", 0)
    recent_requests: int = setting("RECENT_REQUESTS", 20)  # timings of this many recent requests shown on /status
    # requests per client address on /api and /v1, e.g. "60/minute" ("" = off)
    rate_limit: str = setting("RATE_LIMIT", "")

    @classmethod
    def from_env(cls, **overrides) -> "WebSettings":
        """Read every field from its environment variable; keyword arguments win."""
        env = read_env(cls, overrides)
        if not env.get("secret_key"):
            cache_dir = os.environ.get("HF_CACHE_DIR", "").strip() or default_cache_dir()
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
                     "max_sessions", "session_store_mb", "result_ttl_s", "max_results", "result_store_mb",
                     "client_share", "image_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.trusted_proxies <= 10:
            raise ValueError(f"TRUSTED_PROXIES must be between 0 and 10, got {self.trusted_proxies}")
        if self.client_share > 100 or self.image_queue < 0:
            raise ValueError("CLIENT_SHARE_PERCENT must be at most 100 and IMAGE_QUEUE not negative")
        if self.rate_limit and not RATE_RE.fullmatch(self.rate_limit):
            raise ValueError(f'RATE_LIMIT must look like "60/minute" or "10/second; 200/hour", got {self.rate_limit!r}')

    @property
    def max_upload_bytes(self) -> int:
        """MAX_UPLOAD_MB in bytes."""
        return self.max_upload_mb * 2**20
