"""Domain errors raised by the runtime; only the web and CLI layers translate them."""


class RuntimeFailure(Exception):
    """Base of every error the runtime raises on purpose.

    `code` is a stable machine-readable name; `status` is the HTTP status the web layer should use.
    """

    code = "runtime_error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field  # the input field that caused it, for forms (e.g. "image", "question")


class InvalidInput(RuntimeFailure):
    """A request argument is missing, empty or out of range."""

    code = "invalid_input"
    status = 400


class InvalidImage(RuntimeFailure):
    """The bytes are an image we cannot decode (truncated, corrupt, zero-sized)."""

    code = "invalid_image"
    status = 400


class UnsupportedMediaType(RuntimeFailure):
    """The bytes are not an image at all (HTML, SVG, text, PDF...)."""

    code = "unsupported_media_type"
    status = 415


class InputTooLarge(RuntimeFailure):
    """The upload, its pixel count or a text field exceeds a configured limit."""

    code = "input_too_large"
    status = 413


class ModelNotReady(RuntimeFailure):
    """The model is still loading, or failed to load (the message says which)."""

    code = "model_not_ready"
    status = 503


class Busy(RuntimeFailure):
    """The request queue is full; try again after `retry_after` seconds."""

    code = "busy"
    status = 503

    def __init__(self, message: str = "The server is busy, please retry shortly.", *, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class ArtifactsMissing(RuntimeFailure):
    """The exported model folder is missing, incomplete or does not match its manifest."""

    code = "artifacts_missing"
    status = 503
