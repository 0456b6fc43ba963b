"""Reading and checking request inputs (multipart or JSON): images, questions, numbers, phrases."""
from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field

from flask import request
from flask_babel import lazy_gettext as _l
from PIL import Image

from runtime.errors import InputTooLarge, InvalidInput, UnsupportedMediaType
from runtime.images import ImageLimits, load_image
from webapp.settings import WebSettings

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class BadJson(InvalidInput):
    """The request body is not the JSON object it claims to be."""

    code = "invalid_json"


class RemoteImageRefused(InvalidInput):
    """An http(s) image URL while ALLOW_REMOTE_IMAGES is off, or one that could not be fetched."""

    code = "remote_image_refused"


@dataclass
class Payload:
    """The fields of a multipart, form or JSON request, read the same way."""

    values: dict[str, list] = field(default_factory=dict)  # name -> values (strings, or JSON values)
    files: dict[str, object] = field(default_factory=dict)  # name -> werkzeug FileStorage

    def get(self, name: str, default=None):
        """The first value of a field, or `default`."""
        values = self.values.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list:
        """Every value of a field (a JSON list counts as its items)."""
        out = []
        for v in self.values.get(name, []):
            out.extend(v if isinstance(v, list) else [v])
        return out


def read_payload() -> Payload:
    """Read the current request body: multipart/form-data, urlencoded form, or a JSON object."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadJson(_l("The request body is not a valid JSON object."))
        return Payload(values={k: [v] for k, v in data.items()})
    ctype = request.mimetype
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded") or not request.content_length:
        values = {k: request.form.getlist(k) for k in request.form}
        files = {k: f for k, f in request.files.items() if f.filename}  # an empty file input has no name
        return Payload(values=values, files=files)
    raise UnsupportedMediaType(_l("Send the request as multipart/form-data or as application/json."))


def limits(settings: WebSettings) -> ImageLimits:
    """The image limits the settings ask for."""
    return ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)


def read_image(payload: Payload, settings: WebSettings, name: str = "image") -> Image.Image | None:
    """The uploaded image (file, base64, data: URL or allowed http URL) as RGB, or None when absent."""
    upload = payload.files.get(name)
    if upload is not None:
        data = upload.stream.read(settings.max_upload_bytes + 1)
        return decode_image(data, settings)
    value = payload.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidInput(_l("The image must be a file, base64 text or a data: URL."), field=name)
    return decode_image(image_bytes_from_text(value.strip(), settings, name), settings)


def decode_image(data: bytes, settings: WebSettings) -> Image.Image:
    """Bytes -> RGB image under the configured limits (runtime.images does the checking)."""
    if len(data) > settings.max_upload_bytes:
        raise InputTooLarge(_l("The image is larger than %(mb)d MB.", mb=settings.max_upload_mb), field="image")
    return load_image(data, limits(settings))


def image_bytes_from_text(value: str, settings: WebSettings, name: str = "image") -> bytes:
    """A data: URL, an http(s) URL (when allowed) or bare base64 -> the image bytes."""
    lower = value[:16].lower()
    if lower.startswith("data:"):
        return _from_data_url(value, name)
    if lower.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise RemoteImageRefused(_l("Image URLs are not accepted by this server. Send the image itself "
                                        "(a file, base64 or a data: URL)."), field=name)
        return fetch_remote(value, settings, name)
    if "://" in value[:12]:
        raise InvalidInput(_l("Only data: URLs are accepted for images."), field=name)
    return decode_base64(value, name)


def decode_base64(text: str, name: str = "image") -> bytes:
    """Standard or URL-safe base64, padding optional, whitespace ignored."""
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(_l("The image is not valid base64."), field=name) from None


def _from_data_url(url: str, name: str) -> bytes:
    """data:[<type>][;base64],<payload> -> bytes."""
    header, sep, body = url.partition(",")
    if not sep:
        raise InvalidInput(_l("The data: URL has no comma before its data."), field=name)
    if header.lower().endswith(";base64"):
        return decode_base64(body, name)
    return urllib.parse.unquote_to_bytes(body)


def address_allowed(address: str) -> bool:
    """True for a public (globally routable) address: never loopback, private, link-local or reserved."""
    return ipaddress.ip_address(address.split("%")[0]).is_global


def resolve_public(host: str, port: int, name: str) -> str:
    """Resolve host once and return the address to connect to; refuse when any of its addresses is not
    public (a name that resolves to both is refused too)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise RemoteImageRefused(_l("The image URL's host could not be found."), field=name) from None
    addresses = [info[4][0] for info in infos]
    if not addresses or not all(address_allowed(a) for a in addresses):
        raise RemoteImageRefused(_l("The image URL points to a private address."), field=name)
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address that was checked, not to whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is still verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_remote(url: str, settings: WebSettings, name: str = "image") -> bytes:
    """GET a public http(s) URL with a time and size limit. The host is resolved once, every address it has
    must be public, and the connection goes to the address that was checked (no second lookup that DNS
    rebinding could answer differently); redirects are refused (they could lead to an internal address)."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme.lower() == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        raise RemoteImageRefused(_l("The image could not be downloaded from its URL."), field=name) from None
    address = resolve_public(parts.hostname or "", port, name)
    conn = (_PinnedHTTPS if https else _PinnedHTTP)(parts.hostname, port, address, settings.remote_timeout_s)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        conn.request("GET", target, headers={"User-Agent": "internvl-webapp"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RemoteImageRefused(_l("The image could not be downloaded from its URL."), field=name)
        data = resp.read(settings.max_upload_bytes + 1)
    except (http.client.HTTPException, OSError, ValueError):
        raise RemoteImageRefused(_l("The image could not be downloaded from its URL."), field=name) from None
    finally:
        conn.close()
    if len(data) > settings.max_upload_bytes:
        raise InputTooLarge(_l("The image is larger than %(mb)d MB.", mb=settings.max_upload_mb), field=name)
    return data


def read_text(payload: Payload, name: str, limit: int, *, required: bool = True, empty=None) -> str:
    """A stripped text field: empty -> 400 (when required), longer than `limit` -> 413."""
    value = payload.get(name, "")
    if not isinstance(value, str):
        raise InvalidInput(_l("This field must be text."), field=name)
    value = value.strip()
    if required and not value:
        raise InvalidInput(empty or _l("Please type a question."), field=name)
    if len(value) > limit:
        raise InputTooLarge(_l("This text is too long (at most %(n)d characters).", n=limit), field=name)
    return value


def read_int(payload: Payload, name: str, low: int, high: int, default: int | None = None) -> int | None:
    """A whole number in low..high; empty gives `default`."""
    value = payload.get(name)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise InvalidInput(_l("Please give a whole number from %(low)d to %(high)d.", low=low, high=high),
                           field=name)
    return number


def read_float(payload: Payload, name: str, low: float, high: float, default: float) -> float:
    """A number in low..high; empty gives `default`."""
    value = payload.get(name)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not low <= number <= high:
        raise InvalidInput(_l("Please give a number from %(low)g to %(high)g.", low=low, high=high), field=name)
    return number


def read_bool(payload: Payload, name: str, default: bool = False) -> bool:
    """true/false, 1/0, yes/no, on/off; absent gives `default`."""
    value = payload.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise InvalidInput(_l("Please give true or false."), field=name)


def read_choice(payload: Payload, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices`; absent gives `default`."""
    value = payload.get(name) or default
    if value not in choices:
        raise InvalidInput(_l("Please choose one of: %(choices)s.", choices=", ".join(choices)), field=name)
    return value


def read_phrases(payload: Payload, settings: WebSettings, detect_all: bool) -> list[str]:
    """Object phrases from a comma-separated field, repeated fields or a JSON list."""
    phrases: list[str] = []
    for value in payload.getlist("phrases"):
        if not isinstance(value, str):
            raise InvalidInput(_l("Phrases must be text."), field="phrases")
        phrases.extend(p.strip() for p in value.replace("\n", ",").split(","))
    phrases = list(dict.fromkeys(p for p in phrases if p))  # drop empties and repeats, keep order
    if not phrases and not detect_all:
        raise InvalidInput(_l("Please type at least one object to find, or choose all objects."), field="phrases")
    if len(phrases) > settings.max_phrases:
        raise InputTooLarge(_l("Too many phrases (at most %(n)d).", n=settings.max_phrases), field="phrases")
    if any(len(p) > settings.max_phrase_chars for p in phrases):
        raise InputTooLarge(_l("A phrase is too long (at most %(n)d characters).", n=settings.max_phrase_chars),
                            field="phrases")
    return phrases


def thumbnail_url(img: Image.Image, side: int = 160) -> str:
    """A small JPEG of the image as a data: URL, for the dialog history."""
    thumb = img.copy()
    thumb.thumbnail((side, side))
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
