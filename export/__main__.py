"""`python -m export`: export MODEL_NAME into HF_CACHE_DIR (every flag also reads its environment variable)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from export.errors import ExportError
from export.settings import ExportSettings, parse_formats
from runtime.config import load_env_file


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags; each defaults to its environment variable."""
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("--model", help="MODEL_NAME: Hub id, local folder, or builtin:tiny-random")
    p.add_argument("--cache-dir", help="HF_CACHE_DIR: where downloads and exports live")
    p.add_argument("--precision", help="EXPORT_PRECISION: fp32 | fp16 | int8 | int4")
    p.add_argument("--formats", help="EXPORT_FORMATS: openvino, onnx or openvino,onnx")
    p.add_argument("--revision", help="MODEL_REVISION: Hub branch, tag or commit")
    p.add_argument("--check", action="store_true", help="exit 0 if a finished export exists, 1 if not; export nothing")
    p.add_argument("--print-dir", action="store_true", help="print the export folder and exit")
    p.add_argument("--progress-json", action="store_true",
                   help="print progress as JSON lines on stdout (see export/progress.py); used by the web app")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run the export with the settings of .env and the environment (flags win); expected failures print one
    line and return 1 (2 for bad settings)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s export %(levelname)s %(message)s")
    load_env_file()
    try:
        formats = parse_formats(args.formats) if args.formats else None
        settings = ExportSettings.from_env(model_name=args.model, cache_dir=args.cache_dir,
                                           precision=args.precision, formats=formats, revision=args.revision)
    except ValueError as exc:
        print(f"export: invalid setting: {exc}", file=sys.stderr)
        return 2
    from export import progress
    from export.pipeline import is_exported, run_export

    if args.print_dir:
        print(settings.output_dir)
        return 0
    if args.check:
        return 0 if is_exported(settings) else 1
    if args.progress_json:
        progress.emit_json()
    signal.signal(signal.SIGTERM, _interrupt)  # docker stop, or the web app stopping: clean up as for Ctrl-C
    try:
        out = run_export(settings)
    except ExportError as exc:
        return _fail(progress, str(exc))
    except ImportError as exc:  # a serving-only install (EXTRAS=) has no torch / transformers / optimum
        return _fail(progress, f"the export needs the packages of the `export` extra ({exc.name or exc} is "
                               "missing): run `make install EXTRAS=export`, or export on another machine "
                               "into the same cache folder")
    except OSError as exc:  # the cache folder cannot be created or written
        return _fail(progress, f"cannot write to {exc.filename or settings.cache_dir}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print("export: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    if args.progress_json:
        progress.report("done", str(out))
    else:
        print(out)
    return 0


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _fail(progress, reason: str) -> int:
    """Say why the export failed (stderr, and a "failed" progress line), and return the exit code 1."""
    print(f"export: error: {reason}", file=sys.stderr)
    progress.report("failed", reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
