"""Fuzz: the schemathesis CLI against the real server (tiny model) and its own /openapi.json, then the long
image-decoding fuzz (hypothesis, tests/test_fuzz_images.py).

    python tests/load/fuzz.py                    # 200 examples per operation
    python tests/load/fuzz.py --max-examples 1000 --seed 1

Checks: no 500, and status codes, content types, bodies, headers and SSE events as the document says (see
tests/test_fuzz_api.py for why the two data-acceptance checks are left out). Loopback only. Reports go to
tests/artifacts/fuzz/ (JUnit XML); the server log to tests/artifacts/fuzz-server.log. Exits 1 on a failure.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so that `load` imports as a package

from load.report import ARTIFACTS  # noqa: E402
from load.server import ROOT, ServerProcess, ensure_tiny_export  # noqa: E402

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "response_headers_conformance"


def run_schemathesis(url: str, max_examples: int, seed: int) -> int:
    """The schemathesis CLI against url; returns its exit status."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if cli is None:
        print("schemathesis is not installed: pip install schemathesis", file=sys.stderr)
        return 2
    cmd = [cli, "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(max_examples),
           "--seed", str(seed), "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
           "--report", "junit", "--report-dir", str(ARTIFACTS / "fuzz")]
    print(" ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv=None) -> int:
    """Start the server, fuzz its API, fuzz image decoding; 0 when nothing failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-examples", type=int, default=200, help="examples per operation (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=ARTIFACTS / "model_cache", help="HF_CACHE_DIR of the tiny export")
    p.add_argument("--no-images", action="store_true", help="skip the image-decoding fuzz")
    args = p.parse_args(argv)
    ensure_tiny_export(args.cache)
    with ServerProcess(args.cache, ARTIFACTS / "fuzz-server.log", MAX_NEW_TOKENS=64) as server:
        server.wait_health()
        status = run_schemathesis(server.url, args.max_examples, args.seed)
        if not server.alive() or "internal error" in server.log():
            print("FAILED: the server died or logged an internal error (see tests/artifacts/fuzz-server.log)")
            status = status or 1
    if not args.no_images:
        images = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p", "no:cacheprovider",
                                 "tests/test_fuzz_images.py"], cwd=ROOT).returncode
        status = status or images
    return status


if __name__ == "__main__":
    sys.exit(main())
