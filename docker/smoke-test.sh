#!/usr/bin/env bash
# Smoke test of the Docker deployment, end to end on one machine:
#   1. build the service and trainer images (one after the other), show their sizes and the
#      service image's `pip list` (which must not contain torch);
#   2. `compose up` on an empty volume: init trains and exports a small first model, then the API
#      and the worker start; wait until /readyz answers 200 (time from `up` to ready);
#   3. top-k for a user; a budget update with the admin token (401 without it): the default job,
#      the product pipeline ("search"), under a tiny recipe file (docker/compose.recipe.yml); wait
#      for the job; check that the served model changed to the job's artifact at the new sparsity,
#      while a client kept asking for top-k the whole time without one failure; then an equal-size
#      job at another budget, promoted in turn; what byte budgets get at once from the kept models
#      (GET /v1/admin/budget/options); then a rollback to the search job's model through the kept
#      versions (GET /v1/admin/models, POST /v1/admin/models/{version}/promote);
#   4. `down` and `up` again on the same volume: the job history and the current artifact are kept;
#   5. `down`, and `up` with the `ray` profile (a Ray head and worker node from the trainer image,
#      the worker pointed at them with a token): a budget job's pipeline runs on the cluster and
#      its model is promoted (SMOKE_RAY=0 skips this);
#   6. tear everything down (containers, network, volume; the images stay, as build cache).
#
# Honours CONTAINER_ENGINE (default docker), COMPOSE (default "docker compose") and BASE_IMAGE
# (default python:3.11-slim); on this project's machines: `source ../shared/tools/container-engine.sh`
# first. Other knobs: CIESS_DATA_DIR (host folder of the datasets, default ../shared/data),
# SMOKE_PORT (default 18000), SMOKE_INIT_BATCHES and SMOKE_JOB_BATCHES (training batches of the
# first model and of each training of a job, default 50), TORCH_INDEX_URL / TORCH_FIND_LINKS (where
# the trainer build finds the CPU torch; default: a CPU wheel in pip's find-links folder on this
# host, linked into docker/wheels/, else PyTorch's CPU index), SMOKE_REMOVE_IMAGES=1 (remove the
# images at the end), SMOKE_PRUNE=0 (keep dangling images: by default they are pruned after the
# builds), SMOKE_MIN_FREE_GB (default 25: the free space the builds need in the engine's storage;
# they took 22 GB at their peak under vfs storage, measured 2026-12-05).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${CONTAINER_ENGINE:-docker}
read -r -a COMPOSE_CMD <<<"${COMPOSE:-docker compose}"
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
PROJECT=ciess-smoke
TAG=smoke
PORT=${SMOKE_PORT:-18000}
URL=http://127.0.0.1:$PORT
DATA_DIR=$(cd "${CIESS_DATA_DIR:-../shared/data}" && pwd)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
WORK=$(mktemp -d)
started_all=$(date +%s)

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
now() { python3 -c 'import time; print(f"{time.monotonic():.3f}")'; }
elapsed() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# Settings of the stack under test: a small first model and small jobs, so that the test is short.
export CIESS_IMAGE_TAG=$TAG CIESS_PORT=$PORT CIESS_DATA_DIR=$DATA_DIR CIESS_ADMIN_TOKEN=$TOKEN
export BASE_IMAGE
export CIESS_INIT_DATASET=ml-1m
export CIESS_INIT_TRAIN_ARGS="--sizes equal --sparsity 0.9 --max-batches ${SMOKE_INIT_BATCHES:-50}"
# The jobs' recipe (the layout of ciess_core/recipes.toml), mounted read-only into the worker by
# docker/compose.recipe.yml: the whole pipeline (full model, search, fits, retraining, deployment
# model) in minutes of CPU.
printf '%s\n' "episodes = 1" "iterations = 2" "supernet_batches = 30" \
    "max_batches = ${SMOKE_JOB_BATCHES:-50}" "eval_every = 25" >"$WORK/recipe.toml"
chmod 0444 "$WORK/recipe.toml" # read by the container's non-root user
export CIESS_RECIPE_HOST_FILE=$WORK/recipe.toml
COMPOSE_FILES=(-f docker-compose.yml -f docker/compose.recipe.yml)
compose() { "${COMPOSE_CMD[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
plain() { sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /'; } # indented, without colours

teardown() {
    local status=$?
    if [ -f "$WORK/load.pid" ]; then kill "$(cat "$WORK/load.pid")" 2>/dev/null || true; fi
    if [ "$status" -ne 0 ]; then
        log "logs of the stack (last lines):"
        compose logs --tail 40 2>&1 | tail -n 120 || true
    fi
    log "tearing down (containers, network, volume)"
    compose down -v >/dev/null 2>&1 || true
    if [ "${SMOKE_REMOVE_IMAGES:-0}" = 1 ]; then
        "$ENGINE" rmi "ciess-service:$TAG" "ciess-trainer:$TAG" "ciess-service-build:$TAG" \
            "ciess-trainer-build:$TAG" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    log "$([ "$status" -eq 0 ] && echo PASSED || echo FAILED) in $(($(date +%s) - started_all)) s"
}
trap teardown EXIT

[ -d "$DATA_DIR/$CIESS_INIT_DATASET" ] || fail "no $CIESS_INIT_DATASET under $DATA_DIR (set CIESS_DATA_DIR)"
compose down -v >/dev/null 2>&1 || true # leftovers of an interrupted run

# --- the base image ------------------------------------------------------------------------------
# A base image imported from a tar of a root file system (as ../shared/tools/container-engine.sh
# makes its stand-in for python:3.11-slim) can carry `/` at mode 0700, which shuts every non-root
# user, the images' `ciess` included, out of the whole tree. Such a base is exported and imported
# once more (`import` gives `/` a traversable mode); a sound base is used as it is.
mode=$("$ENGINE" run --rm --user 0 --entrypoint stat "$BASE_IMAGE" -c %a / 2>/dev/null || true)
case "$mode" in
    *[1357]) ;;
    "") log "could not read the mode of / in $BASE_IMAGE; using it as it is" ;;
    *)
        fixed="$BASE_IMAGE-traversable"
        [[ "$BASE_IMAGE" == *:* ]] || fixed="$BASE_IMAGE:traversable"
        log "/ in $BASE_IMAGE has mode $mode (not traversable by non-root users): using $fixed"
        if ! "$ENGINE" image inspect "$fixed" >/dev/null 2>&1; then
            container=$("$ENGINE" create "$BASE_IMAGE" true)
            "$ENGINE" export -o "$WORK/base.tar" "$container"
            "$ENGINE" rm "$container" >/dev/null
            "$ENGINE" import "$WORK/base.tar" "$fixed" >/dev/null 2>&1
            rm -f "$WORK/base.tar"
        fi
        BASE_IMAGE=$fixed
        ;;
esac

# --- where the trainer build finds the CPU build of torch -------------------------------------
if [ -z "${TORCH_INDEX_URL:-}" ] && [ -z "${TORCH_FIND_LINKS:-}" ]; then
    shopt -s nullglob
    wheels=(docker/wheels/torch-*+cpu-*.whl)
    wheel=${wheels[0]:-}
    if [ -z "$wheel" ]; then
        links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
        found=""
        if [ -n "$links" ]; then
            wheels=("$links"/torch-*+cpu-cp311-*.whl)
            found=${wheels[0]:-}
        fi
        if [ -n "$found" ]; then
            ln "$found" docker/wheels/ 2>/dev/null || cp "$found" docker/wheels/
            wheel=docker/wheels/$(basename "$found")
        fi
    fi
    if [ -n "$wheel" ]; then
        export TORCH_FIND_LINKS=/wheels
        torch_version=$(basename "$wheel" | sed -E 's/^torch-([^+]+)\+cpu-.*/\1/')
        log "torch: $wheel (TORCH_FIND_LINKS=/wheels)"
    else
        log "torch: PyTorch's CPU index (no local CPU wheel found)"
    fi
    shopt -u nullglob
fi
torch_args=(--build-arg "TORCH_VERSION=${torch_version:-2.13.0}")
if [ -n "${TORCH_FIND_LINKS:-}" ]; then
    torch_args+=(--build-arg "TORCH_FIND_LINKS=$TORCH_FIND_LINKS")
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    torch_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

# --- room for the builds -----------------------------------------------------------------------
# This script's images carry a label, so that pruning removes what its own older builds left
# behind and nothing of other projects'.
SMOKE_LABEL=org.ciess.smoke-test=1
# vfs storage copies every layer in full: one build of both images took 22 GB at its peak. A full
# disk fails a build deep inside the engine ("no space left on device"); check first, prune what
# older builds left behind, and stop with a message that says where the space went.
storage=$("$ENGINE" info --format '{{.Store.GraphRoot}}' 2>/dev/null \
    || "$ENGINE" info --format '{{.DockerRootDir}}' 2>/dev/null || true)
free_gb() { df -P -B1G "$1" 2>/dev/null | awk 'NR == 2 {print $4}'; }
if [ -n "$storage" ] && [ -d "$storage" ]; then
    need=${SMOKE_MIN_FREE_GB:-25}
    if [ "$(free_gb "$storage")" -lt "$need" ]; then
        log "only $(free_gb "$storage") GB free under $storage; pruning dangling images"
        "$ENGINE" image prune -f --filter "label=$SMOKE_LABEL" >/dev/null 2>&1 || true
    fi
    have=$(free_gb "$storage")
    [ "$have" -ge "$need" ] || fail "only $have GB free under $storage (the engine's storage), \
the builds need about $need GB (SMOKE_MIN_FREE_GB): free disk space or remove old images \
(\`$ENGINE system prune -a\`)"
    log "$have GB free under $storage"
fi

# --- images ------------------------------------------------------------------------------------
# podman keeps HEALTHCHECK only in Docker-format images
export BUILDAH_FORMAT=docker
for image in service trainer; do
    extra=()
    if [ "$image" = trainer ]; then extra=("${torch_args[@]}"); fi
    log "building ciess-$image:$TAG (BASE_IMAGE=$BASE_IMAGE)"
    t=$(now)
    # The build stage is tagged too (ciess-<image>-build): a named cache that the pruning below
    # keeps, while it drops what older builds left behind (vfs storage copies every layer in full).
    for target in build ""; do
        if [ -n "$target" ]; then name="ciess-$image-build:$TAG"; else name="ciess-$image:$TAG"; fi
        "$ENGINE" build --label "$SMOKE_LABEL" --build-arg "BASE_IMAGE=$BASE_IMAGE" "${extra[@]}" \
            ${target:+--target "$target"} \
            -f "docker/Dockerfile.$image" -t "$name" . >>"$WORK/build-$image.log" 2>&1 \
            || { tail -n 40 "$WORK/build-$image.log"; fail "build of $name"; }
    done
    log "built ciess-$image:$TAG in $(elapsed "$t") s"
done
if [ "${SMOKE_PRUNE:-1}" = 1 ]; then
    "$ENGINE" image prune -f --filter "label=$SMOKE_LABEL" >/dev/null 2>&1 || true
fi
for image in service trainer; do
    size=$("$ENGINE" image inspect --format '{{.Size}}' "ciess-$image:$TAG")
    log "image ciess-$image:$TAG: $((size / 1000000)) MB"
done
log "pip list of ciess-service:$TAG:"
"$ENGINE" run --rm --entrypoint pip "ciess-service:$TAG" list --format freeze 2>/dev/null \
    | tee "$WORK/service-pip.txt" | sed 's/^/    /'
grep -qi '^torch==' "$WORK/service-pip.txt" && fail "torch is in the service image"
grep -qi '^onnxruntime==' "$WORK/service-pip.txt" || fail "onnxruntime is missing from the service image"
log "the service image has no torch"
for image in service trainer; do
    user=$("$ENGINE" image inspect --format '{{.Config.User}}' "ciess-$image:$TAG")
    case "$user" in "" | 0 | 0:* | root | root:*) fail "ciess-$image runs as root" ;; esac
done
log "both images run as the user '$user', not root"
# The entry point runs a `ciess` command whose name is also a shell builtin (`export`), and a
# program on PATH as itself.
"$ENGINE" run --rm "ciess-trainer:$TAG" export --help 2>&1 | grep -q "usage: ciess export" \
    || fail "the trainer image's entry point does not run 'ciess export'"
"$ENGINE" run --rm "ciess-trainer:$TAG" python -c "print('program')" | grep -qx program \
    || fail "the trainer image's entry point does not run a program on PATH"
log "the entry point runs ciess commands (export included) and programs"

# --- helpers for the API -----------------------------------------------------------------------
http() { # METHOD PATH [BODY] -> prints "STATUS BODY"; SMOKE_AUTH=token adds the bearer token
    python3 - "$URL" "$@" <<'EOF'
import json, os, sys, urllib.error, urllib.request
url, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
request = urllib.request.Request(url + path, data=body, method=method)
if body is not None:
    request.add_header("Content-Type", "application/json")
if os.environ.get("SMOKE_AUTH"):
    request.add_header("Authorization", "Bearer " + os.environ["SMOKE_AUTH"])
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
except OSError as error:
    print(0, json.dumps({"error": str(error)}))
EOF
}
field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])$2)" "$1"; }
wait_ready() { # seconds: until /readyz answers 200
    local deadline=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ "$(http GET /readyz | cut -d' ' -f1)" = 200 ] && return 0
        sleep 1
    done
    return 1
}

# A service's healthcheck as configured (compose's over the image's), run once in its container
# (at most 20 s): the engine need not run it itself (podman without systemd does not).
healthy() {
    local service=$1 id
    id=$("$ENGINE" ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$service" | head -n 1)
    [ -n "$id" ] || { echo "no running $service container" >&2; return 1; }
    mapfile -t command < <("$ENGINE" inspect --format '{{json .Config.Healthcheck.Test}}' "$id" \
        | python3 -c 'import json, sys
test = json.load(sys.stdin)
print("\n".join(test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]))')
    "$ENGINE" exec "$id" timeout 20 "${command[@]}" >/dev/null 2>&1
}

check_health() {
    local service
    for service in api worker; do
        healthy "$service" || fail "the $service healthcheck fails"
    done
    log "healthchecks of api and worker pass"
}

# --- up on an empty volume -----------------------------------------------------------------------
log "compose up (empty volume: init trains the first model)"
t_up=$(now)
compose up -d --no-build >"$WORK/up.log" 2>&1 || { tail -n 40 "$WORK/up.log"; fail "compose up"; }
log "compose up returned after $(elapsed "$t_up") s"
wait_ready 900 || fail "the API was not ready within 900 s"
first_ready=$(elapsed "$t_up")
log "up -> ready: $first_ready s (includes training the first model)"
compose logs init 2>&1 | grep -E 'ciess-init|sparsity|test' | plain || true
check_health

reply=$(http GET /v1/model)
[ "${reply%% *}" = 200 ] || fail "GET /v1/model: $reply"
version_before=$(field "${reply#* }" "['version']")
sparsity_before=$(field "${reply#* }" "['sparsity']")
log "serving $version_before (sparsity $sparsity_before)"
user_id=$(compose exec -T api python -c \
    "import json; print(json.load(open('/var/lib/ciess/initial/ids/users.json'))[0])" | tr -d '\r')
reply=$(http GET "/v1/users/$user_id/recommendations?k=10")
[ "${reply%% *}" = 200 ] || fail "top-k: $reply"
log "top-10 for user $user_id: $(field "${reply#* }" "['items'][:3]") …"

# --- a client that keeps asking for top-k while the job runs ---------------------------------
python3 - "$URL/v1/users/$user_id/recommendations?k=10" "$WORK" <<'EOF' &
import collections, json, os, sys, time, urllib.error, urllib.request
url, work = sys.argv[1], sys.argv[2]
counts, versions, errors = collections.Counter(), collections.Counter(), []
deadline = time.monotonic() + 1800  # bounded: 30 min or 20,000 requests at most
sent = 0
while not os.path.exists(f"{work}/load.stop") and time.monotonic() < deadline and sent < 20000:
    sent += 1
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            counts[response.status] += 1
            versions[json.loads(response.read())["model_version"]] += 1
    except urllib.error.HTTPError as error:
        counts[error.code] += 1
        errors.append(f"{error.code} {error.read()[:200]!r}")
    except OSError as error:
        counts["connection"] += 1
        errors.append(str(error))
    time.sleep(0.1)
with open(f"{work}/load.json", "w") as out:
    json.dump({"requests": sent, "status": {str(k): v for k, v in counts.items()},
               "versions": versions, "errors": errors[:5]}, out)
EOF
echo $! >"$WORK/load.pid"

# --- budget updates ------------------------------------------------------------------------------
run_job() { # BODY: post the budget and wait for its job to end; sets job, reply and state
    reply=$(SMOKE_AUTH=$TOKEN http POST /v1/admin/budget "$1")
    [ "${reply%% *}" = 202 ] || fail "POST /v1/admin/budget $1: $reply"
    job=$(field "${reply#* }" "['id']")
    log "budget job $job queued: $1"
    local t_job deadline
    t_job=$(now)
    deadline=$(($(date +%s) + 900))
    state=queued
    while [ "$(date +%s)" -lt "$deadline" ]; do
        reply=$(SMOKE_AUTH=$TOKEN http GET "/v1/admin/jobs/$job")
        state=$(field "${reply#* }" "['state']")
        case "$state" in succeeded | failed | cancelled) break ;; esac
        sleep 2
    done
    log "job $job ($(field "${reply#* }" "['params'].get('method')")): $state after" \
        "$(elapsed "$t_job") s ($(field "${reply#* }" "['message']"))"
    [ "$state" = succeeded ] || fail "job $job ended $state"
}
wait_served() { # VERSION BUDGET: the API swaps the promoted artifact in within its poll interval
    local deadline=$(($(date +%s) + 60))
    version_after=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        reply=$(http GET /v1/model)
        version_after=$(field "${reply#* }" "['version']")
        [ "$version_after" = "$1" ] && break
        sleep 1
    done
    [ "$version_after" = "$1" ] || fail "the API serves $version_after, not the promoted $1"
    sparsity_after=$(field "${reply#* }" "['sparsity']")
    python3 -c "import sys; sys.exit(not float(sys.argv[1]) >= float(sys.argv[2]) - 1e-9)" \
        "$sparsity_after" "$2" || fail "the new model's sparsity $sparsity_after misses the budget $2"
    log "serving $version_after (sparsity $sparsity_after, sizes" \
        "$(field "${reply#* }" "['dataset'].get('size_scheme')"))"
}

# The default job (no method: the service's job_method, the product pipeline), under load.
budget='{"target_sparsity": 0.95}'
reply=$(http POST /v1/admin/budget "$budget")
[ "${reply%% *}" = 401 ] || fail "a budget update without the token was not refused with 401: $reply"
run_job "$budget"
[ "$(field "${reply#* }" "['params'].get('method')")" = search ] \
    || fail "the default budget job did not run the pipeline (method search): $reply"
promoted=$(field "${reply#* }" "['artifact_version']")
search_job=$job
search_version=$promoted
wait_served "$promoted" 0.95
log "was $version_before (sparsity $sparsity_before)"
sleep 3 # a few requests on the new model
touch "$WORK/load.stop"
wait "$(cat "$WORK/load.pid")"
rm -f "$WORK/load.pid"
load=$(cat "$WORK/load.json")
log "top-k during the job: $load"
python3 - "$load" "$version_before" "$promoted" <<'EOF' || fail "top-k requests failed during the job"
import json, sys
load, before, after = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ok = load["status"].get("200", 0)
assert ok == load["requests"] and ok > 0, load
assert load["versions"].get(before) and load["versions"].get(after), load["versions"]
EOF
log "every top-k request succeeded, on the old model and then on the new one"

# Equal sizes at another budget, under the same recipe (one training and the deployment model).
run_job '{"target_sparsity": 0.9, "method": "equal"}'
promoted=$(field "${reply#* }" "['artifact_version']")
equal_job=$job
equal_version=$promoted
wait_served "$promoted" 0.9

# --- rollback: the kept versions, and the search job's model served again -----------------------
reply=$(SMOKE_AUTH=$TOKEN http GET /v1/admin/models)
[ "${reply%% *}" = 200 ] || fail "GET /v1/admin/models: $reply"
python3 - "${reply#* }" "$search_version" "$equal_version" <<'EOF' || fail "kept versions: $reply"
import json, sys
models = {model["version"]: model for model in json.loads(sys.argv[1])["models"]}
assert sys.argv[2] in models and models[sys.argv[3]]["served"], sorted(models)
EOF
# What byte budgets get at once from the kept models (the search job's records its validation in
# every type, and it kept its full model for turned cuts): the best within each size.
reply=$(SMOKE_AUTH=$TOKEN http GET /v1/admin/budget/options)
[ "${reply%% *}" = 200 ] || fail "GET /v1/admin/budget/options: $reply"
python3 - "${reply#* }" <<'EOF' || fail "budget options: $reply"
import json, sys
options = json.loads(sys.argv[1])["options"]
assert options, "no kept model offers a budget anything at once"
assert [o["bytes"] for o in options] == sorted(o["bytes"] for o in options), options
assert all(a["valid"] < b["valid"] for a, b in zip(options, options[1:])), options
EOF
log "budget options (bytes, job, validation): $(python3 -c 'import json, sys
print([(o["bytes"], o["kind"], round(o["valid"], 4)) for o in json.loads(sys.argv[1])["options"]])' \
    "${reply#* }")"
reply=$(SMOKE_AUTH=$TOKEN http POST "/v1/admin/models/$search_version/promote")
[ "${reply%% *}" = 200 ] || fail "rollback to $search_version: $reply"
wait_served "$search_version" 0.95
promoted=$search_version
log "rolled back from $equal_version to $search_version (the search job's model)"

# --- the volume survives down and up (and keeps the rolled-back pointer) -----------------------
log "compose down (the volume stays) and up again, the admin token now from a secret file"
compose down >/dev/null 2>&1
printf '%s\n' "$TOKEN" >"$WORK/admin-token"
chmod 0444 "$WORK/admin-token" # read by the container's non-root user
unset CIESS_ADMIN_TOKEN
export CIESS_ADMIN_TOKEN_SECRET=$WORK/admin-token
COMPOSE_FILES+=(-f docker/compose.secret.yml)
t_up=$(now)
compose up -d --no-build >"$WORK/up2.log" 2>&1 || { tail -n 40 "$WORK/up2.log"; fail "compose up (again)"; }
wait_ready 300 || fail "the API was not ready within 300 s after the second up"
second_ready=$(elapsed "$t_up")
log "up -> ready (volume already holding a model): $second_ready s"
compose logs init 2>&1 | grep 'ciess-init' | tail -n 1 | plain || true
reply=$(http GET /v1/model)
[ "$(field "${reply#* }" "['version']")" = "$promoted" ] \
    || fail "after down/up the API serves $(field "${reply#* }" "['version']"), not $promoted"
reply=$(SMOKE_AUTH=$TOKEN http GET /v1/admin/jobs)
python3 - "${reply#* }" "$search_job" "$equal_job" <<'EOF' || fail "after down/up the job history lost a job: $reply"
import json, sys
jobs = {job["id"]: job["state"] for job in json.loads(sys.argv[1])["jobs"]}
assert all(jobs.get(int(job)) == "succeeded" for job in sys.argv[2:]), jobs
EOF
reply=$(http GET "/v1/users/$user_id/recommendations?k=10")
[ "${reply%% *}" = 200 ] || fail "top-k after down/up: $reply"
log "after down/up: still serving $promoted, jobs $search_job and $equal_job still listed as" \
    "succeeded (token from the secret)"
check_health

# --- the `ray` profile: a Ray head and worker node, and the job worker driving them ------------
ray_summary="skipped (SMOKE_RAY=0)"
if [ "${SMOKE_RAY:-1}" = 1 ]; then
    log "compose down, then up with the ray profile: the worker sends budget jobs to the cluster"
    compose down >/dev/null 2>&1
    CIESS_RAY_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    export CIESS_RAY_TOKEN CIESS_RAY_ADDRESS=ray://ray-head:10001
    COMPOSE_FILES+=(--profile ray)
    compose up -d --no-build >"$WORK/up-ray.log" 2>&1 || { tail -n 40 "$WORK/up-ray.log"; fail "compose --profile ray up"; }
    wait_ready 300 || fail "the API was not ready within 300 s after up with the ray profile"
    # The worker node joins once the head is healthy. Docker enforces that and `up --wait` waits for
    # the worker node's health (the cluster has CPUs); podman before 4.6 enforces neither, so wait
    # here: queue the job once the worker node's healthcheck passes (the cluster has CPUs), or after
    # at most 180 s (the job then says why it could not connect).
    for _ in $(seq 1 12); do
        healthy ray-worker && break
        sleep 5
    done
    t_ray=$(now)
    run_job '{"target_sparsity": 0.8}'
    ray_job=$job
    promoted=$(field "${reply#* }" "['artifact_version']")
    wait_served "$promoted" 0.8
    executor=$(compose exec -T worker python -c "import json, pathlib
summaries = sorted(pathlib.Path('/var/lib/ciess/searches').glob('*/summary.json'), key=lambda p: p.stat().st_mtime)
summary = json.loads(summaries[-1].read_text())
print(summary['executor'], summary['workers'])" | tr -d '\r')
    [ "$executor" = "ray 2" ] || fail "job $ray_job's pipeline ran on '$executor', not on the Ray cluster two units at a time"
    compose logs ray-worker 2>&1 | tail -n 3 | plain || true
    ray_summary="job $ray_job (search on the Ray cluster) promoted $promoted in $(elapsed "$t_ray") s"
    log "$ray_summary"
fi
log "summary: up->ready $first_ready s on an empty volume (init included), $second_ready s on a" \
    "kept one; jobs $search_job (search) and $equal_job (equal) promoted, then rolled back to" \
    "$search_version; ray profile: $ray_summary"
