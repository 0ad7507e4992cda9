#!/usr/bin/env bash
# Runs the whole test suite (unit and ROS integration tests) inside the workspace environment.
# Each run gets its own ROS_DOMAIN_ID and stays on loopback, so parallel runs and other ROS
# graphs on the network do not see each other. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -f install/setup.bash ] || [ ! -x .venv/bin/python ]; then
  echo "error: the workspace is not set up; run: bash scripts/setup.sh" >&2
  exit 2
fi
# shellcheck disable=SC1091
set +u; . scripts/env.sh; set -u

# A domain id for this run, 1..101 (valid for every RMW): the first free one from a
# PID/time-derived start, held by a lock file for the whole run so that concurrent runs on
# this machine never share a domain. TWINRL_KEEP_DOMAIN=1 keeps a caller-chosen ROS_DOMAIN_ID.
if [ -z "${TWINRL_KEEP_DOMAIN:-}" ] || [ -z "${ROS_DOMAIN_ID:-}" ]; then
  base=$(( ($$ + 10#$(date +%N)) % 101 ))
  for i in $(seq 0 100); do
    ROS_DOMAIN_ID=$(( (base + i) % 101 + 1 ))
    exec 8>"/tmp/twinrl-ros-domain-$ROS_DOMAIN_ID.lock"
    flock -n 8 && break
  done
fi
export ROS_DOMAIN_ID
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYTHONUNBUFFERED=1
export TWINRL_TEST_RUN=1
echo "twinrl tests: ROS_DOMAIN_ID=$ROS_DOMAIN_ID RMW=$RMW_IMPLEMENTATION MUJOCO_GL=$MUJOCO_GL"
# Each run gets its own pytest base temp dir: concurrent sessions sharing /tmp/pytest-of-$USER
# prune each other's numbered directories.
TMP_RUN=$(mktemp -d "${TMPDIR:-/tmp}/twinrl-tests.XXXXXX")
trap 'rm -rf "$TMP_RUN"' EXIT
python -m pytest -p no:cacheprovider --basetemp="$TMP_RUN/pytest" "${@:-tests}"
