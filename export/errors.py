"""Errors the export stage raises on purpose; the CLI prints them as one line and exits non-zero."""


class ExportError(Exception):
    """An expected failure: bad model id, missing weights, corrupt file, full disk."""
