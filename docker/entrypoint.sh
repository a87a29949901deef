#!/bin/sh
# Entry point of both images: the admin token from a secret file if one is named, then either a
# program on PATH (`bash`, `ciess-init`, `python` …) or a `ciess` command (`serve`, `worker`,
# `train …`, `export …`, `--help`).
set -eu

# CIESS_ADMIN_TOKEN_FILE (e.g. a compose secret under /run/secrets) fills CIESS_ADMIN_TOKEN, so the
# token need not sit in the container's environment definition.
if [ -n "${CIESS_ADMIN_TOKEN_FILE:-}" ]; then
    if [ -n "${CIESS_ADMIN_TOKEN:-}" ]; then
        echo "entrypoint: set CIESS_ADMIN_TOKEN or CIESS_ADMIN_TOKEN_FILE, not both" >&2
        exit 2
    fi
    if [ ! -r "$CIESS_ADMIN_TOKEN_FILE" ]; then
        echo "entrypoint: CIESS_ADMIN_TOKEN_FILE=$CIESS_ADMIN_TOKEN_FILE is not a readable file" >&2
        exit 2
    fi
    CIESS_ADMIN_TOKEN=$(cat "$CIESS_ADMIN_TOKEN_FILE")
    export CIESS_ADMIN_TOKEN
    unset CIESS_ADMIN_TOKEN_FILE
fi

# A program is a path (`./job.sh`) or a file on PATH: `command -v` also names shell builtins
# (`export`, `test`), which are `ciess` commands here, so only a path it gives counts.
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    case "$1" in
        */*) exec "$@" ;;
    esac
    case "$(command -v "$1" 2>/dev/null || true)" in
        /*) exec "$@" ;;
    esac
fi
exec ciess "$@"
