#!/usr/bin/env bash
# The Docker deployment's smoke test in CI (docker/smoke-test.sh), engine set up through the shared
# ../shared/tools/container-engine.sh. Skipped with CIESS_DOCKER_SMOKE=0.
#
# Policy: when the machine cannot provide a container engine at all (the shared script fails: no
# package mirror, no privileges), this prints why and exits 0, so that CI still reports the tests;
# once an engine is there, any failure of the smoke test itself fails CI.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${CIESS_DOCKER_SMOKE:-1}" = "0" ]; then
    echo "docker smoke test: skipped (CIESS_DOCKER_SMOKE=0)"
    exit 0
fi
engine_script=../shared/tools/container-engine.sh
if [ ! -f "$engine_script" ]; then
    echo "docker smoke test: SKIPPED, $engine_script is missing"
    exit 0
fi
started=$(date +%s)
# The shared script reads /etc/apt/sources.list under pipefail and stops where a machine has only
# sources.list.d; an empty list is what apt assumes anyway.
if [ ! -e /etc/apt/sources.list ] && [ -w /etc/apt ]; then
    touch /etc/apt/sources.list
fi
# shellcheck disable=SC1090
if ! (source "$engine_script") >/tmp/ciess-container-engine.log 2>&1; then
    echo "docker smoke test: SKIPPED, no container engine on this machine:"
    tail -n 20 /tmp/ciess-container-engine.log
    exit 0
fi
# shellcheck disable=SC1090
source "$engine_script" >/dev/null 2>&1
echo "docker smoke test: engine ready after $(($(date +%s) - started)) s ($CONTAINER_ENGINE)"
set -e
SMOKE_PORT="${SMOKE_PORT:-18765}" bash docker/smoke-test.sh
echo "docker smoke test: passed in $(($(date +%s) - started)) s (engine setup included)"
