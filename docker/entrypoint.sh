#!/bin/sh
# Container entrypoint: check the cache volume, drop root, then serve.
#
#   entrypoint.sh              serve (`python -m webapp`): the server answers at once and, on a first
#                              start, downloads and exports MODEL_NAME in the background (/health shows
#                              the phase, or the reason it failed)
#   entrypoint.sh CMD [ARG...] run CMD instead (e.g. `python -m export --check`), same user and checks
#
# Started as root (the image default), it only makes sure the cache is writable and then re-runs
# itself without root: as the owner of the cache folder when that is an ordinary user (so files
# written into ./data/model_cache on the host stay yours), else as $APP_USER after handing an
# empty root-owned cache (the folder Docker creates for a missing bind-mount source) to that user.
# Started as any other user (`docker run --user`), it just checks.
#
# Environment: HF_CACHE_DIR (the cache volume, default /cache), APP_USER (whom to run as when
# started as root; unset = stay root), PYTHON (interpreter, default python; tests point it at a fake).
set -eu

PYTHON="${PYTHON:-python}"
CACHE_DIR="${HF_CACHE_DIR:-/cache}"
export HF_CACHE_DIR="$CACHE_DIR"

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() { printf 'entrypoint: error: %s\n' "$*" >&2; exit 1; }

check_cache_exists() {
    [ -d "$CACHE_DIR" ] || die "cache folder $CACHE_DIR does not exist. Mount a volume there, e.g.
  docker run -v \"\$PWD/data/model_cache:$CACHE_DIR\" ...   (docker compose does this for you)"
}

check_cache_writable() {
    probe="$CACHE_DIR/.entrypoint-write-test.$$"
    if ( : >"$probe" ) 2>/dev/null; then
        rm -f "$probe"
        return 0
    fi
    die "cache folder $CACHE_DIR is not writable by uid $(id -u). On the host, run
  sudo chown -R $(id -u):$(id -g) data/model_cache
or start the container as the folder's owner (compose: user: \"UID:GID\")."
}

# Re-run this script as uid:gid $1 (python switches user, so no gosu/setpriv is needed).
rerun_as() {
    ids=$1
    shift
    log "running as uid:gid $ids"
    exec "$PYTHON" -c 'import os, pwd, sys
uid, gid = (int(x) for x in sys.argv[1].split(":"))
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
try:
    home = pwd.getpwuid(uid).pw_dir
except KeyError:
    home = "/tmp"
os.environ["HOME"] = home if os.access(home, os.W_OK | os.X_OK) else "/tmp"
os.execvp(sys.argv[2], sys.argv[2:])' "$ids" /bin/sh "$0" "$@"
}

# As root: pick the user to serve as, make the cache theirs if Docker created it, drop root.
drop_root() {
    owner=$(stat -c %u "$CACHE_DIR")
    if [ "$owner" != 0 ]; then
        rerun_as "$owner:$(stat -c %g "$CACHE_DIR")" "$@"
    fi
    uid=$(id -u "$APP_USER") || die "APP_USER $APP_USER does not exist"
    gid=$(id -g "$APP_USER")
    if [ -z "$(ls -A "$CACHE_DIR")" ]; then
        chown "$uid:$gid" "$CACHE_DIR" || log "warning: could not hand $CACHE_DIR to $APP_USER"
    fi
    rerun_as "$uid:$gid" "$@"
}

check_cache_exists
if [ "$(id -u)" = 0 ] && [ -n "${APP_USER:-}" ]; then
    drop_root "$@"
fi
check_cache_writable

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

log "starting the web app on ${HOST:-0.0.0.0}:${PORT:-7860} (cache $CACHE_DIR)"
exec "$PYTHON" -m webapp
