# Shared by the bench/ scripts (sourced, not run). See docs/benchmarks.md.
# shellcheck shell=bash

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Release binaries by default: what an operator runs. BENCH_PROFILE=debug uses the debug build.
BENCH_PROFILE=${BENCH_PROFILE:-release}
BIN_DIR="$ROOT/target/$BENCH_PROFILE"
CC_CI="$BIN_DIR/cc-ci"
# shellcheck disable=SC2034 # used by the scripts that source this file
ABRA="$BIN_DIR/abra-standin"

# Unique per bench process, so gc and teardown of other runs on the same swarm never meet ours.
BENCH_ID="b$(printf '%04x' $((RANDOM)))$$"
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/cc-ci-bench.XXXXXX")
trap 'rm -rf "$BENCH_TMP"' EXIT


build_product() {
  local flag=()
  [ "$BENCH_PROFILE" = release ] && flag=(--release)
  (cd "$ROOT" && cargo build -q "${flag[@]}" -p cc-ci -p abra-standin)
}

build_bench() {
  # bench/ is a workspace of its own sharing ../target (bench/.cargo/config.toml).
  (cd "$ROOT/bench" && cargo build -q --release --bins)
}

now() { date +%s.%N; }

# elapsed START: seconds since START (from `now`), 3 decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# median of the numbers on stdin (one per line).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ratio A B: A / B, 3 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# A fixture recipe as a git repository: fixture NAME → prints its path.
fixture() {
  local name=$1 dir="$BENCH_TMP/recipes/$1"
  [ -d "$dir" ] || "$ROOT/scripts/make-fixture-repo" "$ROOT/tests/fixtures/recipes/$name" "$dir" >/dev/null
  echo "$dir"
}

# write_config FILE [extra [harness] lines...]: a config with this bench's own domain suffix and
# work dir.
write_config() {
  local file=$1
  shift
  {
    echo "[harness]"
    echo "domain_suffix = \"$BENCH_ID.bench\""
    echo "work_dir = \"$BENCH_TMP/work\""
    for l in "$@"; do echo "$l"; done
  } >"$file"
  "$CC_CI" check-config "$file" >/dev/null 2>&1 || { "$CC_CI" check-config "$file"; return 1; }
}

# Runs a command under a pseudo-terminal (abra, and so the stand-in, needs one).
pty() {
  local cmd
  cmd=$(printf '%q ' "$@")
  script -qefc "$cmd" /dev/null
}

# Swarm objects whose name contains PATTERN (services, networks, secrets, configs, volumes,
# containers): one per line, empty when clean.
swarm_leftovers() {
  local p=$1
  {
    docker service ls --format 'service {{.Name}}'
    docker network ls --format 'network {{.Name}}'
    docker secret ls --format 'secret {{.Name}}'
    docker config ls --format 'config {{.Name}}'
    docker volume ls --format 'volume {{.Name}}'
    docker ps -a --format 'container {{.Names}}'
  } 2>/dev/null | grep -F -- "$p" || true
}

bench_cleanup() {
  local rc=$?
  # Whatever a failed bench left on the swarm: only our suffix.
  if [ -x "$CC_CI" ] && [ -f "$BENCH_TMP/gc.toml" ]; then
    "$CC_CI" gc --config "$BENCH_TMP/gc.toml" >/dev/null 2>&1 || true
  fi
  rm -rf "$BENCH_TMP"
  exit $rc
}

bench_init() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  write_config "$BENCH_TMP/gc.toml"
}

machine() {
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))," \
    "$(free -g | awk '/Mem:/ { print $2 }') GiB RAM, kernel $(uname -r)," \
    "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null), load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# wait_converged STACK [SECONDS]: until every service of the stack runs all its replicas, no
# container is still starting or unhealthy and no update is going on (what abra's own monitor does
# not promise, so the scripts that deploy with -c wait themselves).
wait_converged() {
  local stack=$1 limit=${2:-120} start=$SECONDS label="label=com.docker.stack.namespace=$1"
  while :; do
    local reps states updating=0 id
    reps=$(docker service ls --filter "$label" --format '{{.Replicas}}')
    states=$(docker ps --filter "$label" --format '{{.Status}}')
    for id in $(docker service ls -q --filter "$label"); do
      [ "$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$id")" = updating ] && updating=1
    done
    if [ -n "$reps" ] && ! awk '{ split($1, r, "/"); if (r[1] != r[2]) bad = 1 } END { exit !bad }' <<<"$reps" \
      && ! grep -qE 'starting|unhealthy' <<<"$states" && [ "$updating" = 0 ]; then
      return 0
    fi
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      echo "wait_converged: $stack did not converge within ${limit}s: $reps / $states" >&2
      return 1
    fi
    sleep 0.2
  done
}
