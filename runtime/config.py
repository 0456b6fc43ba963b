"""One way to read settings, for every stage: `.env` under the environment, into frozen dataclasses.

Each field names its environment variable and its default once, with `setting(ENV, default)`;
`read_env(cls)` reads them all, cast to the default's type. `load_env_file()` copies a `.env` file
(python-dotenv's parser, the one Docker Compose's format follows) into the environment without
overriding what is already set, so the environment always wins over `.env`. Every entry point
(`python -m webapp`, `python -m export`, the benchmarks) calls it once at start.
"""
from __future__ import annotations

import os
from dataclasses import MISSING, field, fields
from pathlib import Path

ENV_FILE = "ENV_FILE"  # names another file to read instead of ./.env
TRUE_WORDS = ("1", "true", "yes", "on")
_WORDS = {int: "whole number", float: "number"}


def load_env_file(path: str | os.PathLike | None = None) -> Path | None:
    """Copy KEY=VALUE lines of `.env` (or $ENV_FILE) into os.environ, never overriding a set variable;
    returns the file read, or None when there is none."""
    from dotenv import load_dotenv

    target = Path(path or os.environ.get(ENV_FILE) or ".env")
    if not target.is_file():
        return None
    load_dotenv(target, override=False, interpolate=False)
    return target


def setting(env: str, default, *, parse=None, fallback=None):
    """A dataclass field read from environment variable `env`: unset or blank gives `default`, or
    `fallback()` when the default is empty and a value must be worked out (e.g. a folder of the cwd);
    `parse(text)` replaces the cast to the default's type."""
    return field(default=default, metadata={"env": env, "parse": parse, "fallback": fallback})


def read_env(cls, overrides: dict) -> dict:
    """Constructor arguments for dataclass `cls` from the environment; overrides that are not None win."""
    values = {}
    for f in fields(cls):
        env = f.metadata.get("env")
        if not env:
            continue
        raw = (os.environ.get(env) or "").strip()
        if raw:
            values[f.name] = _cast(env, raw, f.default, f.metadata["parse"])
        elif f.metadata["fallback"] is not None and f.default in ("", None, MISSING):
            values[f.name] = f.metadata["fallback"]()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def describe(settings) -> dict[str, object]:
    """{ENV: value} of a settings object, for `--print-settings` and logs."""
    return {f.metadata["env"]: getattr(settings, f.name) for f in fields(settings) if f.metadata.get("env")}


def _cast(env: str, raw: str, default, parse):
    if parse is not None:
        return parse(raw)
    kind = type(default)
    if kind is bool:
        return raw.lower() in TRUE_WORDS
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{env} must be a {_WORDS[kind]}, got {raw!r}") from None
    return raw
