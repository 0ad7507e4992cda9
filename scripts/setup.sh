#!/usr/bin/env bash
# One-command setup for a fresh machine (Debian/Ubuntu, Python 3.11, no ROS apt install):
#   system packages -> .venv (torch pinned to the CPU build) -> ROS 2 Kilted wheels with the
#   three PyPI fixes -> project Python deps -> colcon build -> `twinrl` command in the venv.
# Idempotent: each step checks what is already there; a second run only re-checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TWINRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

step() { printf '\033[1;34m==> %s\033[0m\n' "$*"; }

# One setup at a time per checkout (parallel shells rebuilding the same workspace collide).
exec 9>"$ROOT/.setup.lock"
flock 9

# ---------------------------------------------------------------- system packages
APT_PKGS=(cmake g++ make git
  libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libglu1-mesa  # headless GL for MuJoCo
  libusb-1.0-0                                                       # open3d imports need it
  libgomp1 libxrender1 libxext6 libsm6)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  step "system packages present"
fi

# ---------------------------------------------------------------- venv
if [ ! -x "$VENV/bin/python" ]; then
  step "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export VIRTUAL_ENV="$VENV"

# ---------------------------------------------------------------- pip (ROS wheels + deps)
stamp="$VENV/.twinrl-pip-stamp"
want=$(cat constraints.txt requirements.txt requirements-ros.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing Python packages (torch pinned by constraints.txt)"
  "$VPY" -m pip install -q --upgrade "pip>=24" "setuptools<80" wheel -c constraints.txt 2> >(grep -v "is ignored" >&2)
  "$VPY" -m pip install -q -c constraints.txt -r requirements-ros.txt 2> >(grep -v "is ignored" >&2)
  "$VPY" -m pip install -q -c constraints.txt -r requirements.txt 2> >(grep -v "is ignored" >&2)
  if "$VPY" -m pip show launch >/dev/null 2>&1 && ! "$VPY" -c "import launch.launch_description" 2>/dev/null; then
    echo "error: the unrelated PyPI package 'launch' is installed in $VENV; it shadows ROS 2 launch." >&2
    echo "       remove it: $VPY -m pip uninstall -y launch" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
else
  step "Python packages up to date"
fi

# PLATFORM fix 2: the wheels' generator cmake files hard-code the build machine's Python paths.
PYINC=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VPY" -c 'import numpy; print(numpy.get_include())')
shopt -s nullglob
for f in "$VENV"/share/*/cmake/*__rosidl_generator_pyExport.cmake "$VENV"/share/*/cmake/*rosidl_generator_py*Export*.cmake; do
  if grep -q '/opt/python/cp311-cp311' "$f"; then
    sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
           -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" "$f"
  fi
done
shopt -u nullglob

# ---------------------------------------------------------------- colcon build
# PLATFORM fix 3: point CMake at the venv's Python and the venv's ROS prefix.
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
bstamp="$ROOT/install/.twinrl-build-stamp"
bwant=$( (cd "$ROOT" && find src config launch colcon.meta -type f -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 \
          | sort -z | xargs -0 sha256sum; echo "$VENV") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$bstamp" 2>/dev/null)" != "$bwant" ]; then
  step "colcon build"
  "$VENV/bin/colcon" --log-base "$ROOT/log" build --base-paths "$ROOT/src" \
      --build-base "$ROOT/build" --install-base "$ROOT/install" \
      --metas "$ROOT/colcon.meta" --event-handlers console_cohesion- summary+ \
      --symlink-install --cmake-args -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF
  echo "$bwant" >"$bstamp"
else
  step "colcon workspace up to date"
fi

# ---------------------------------------------------------------- twinrl command in the venv
# Editable installs put the project's Python packages and the `twinrl` entry point in the venv;
# twinrl_bringup.workspace re-executes with the colcon workspace environment when needed.
estamp="$VENV/.twinrl-editable-stamp"
ewant=$(cat src/*/setup.py src/*/setup.cfg 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$estamp" 2>/dev/null)" != "$ewant" ] || [ ! -x "$VENV/bin/twinrl" ]; then
  step "installing the project's packages into the venv (editable)"
  for pkg in src/twinrl_*/; do
    [ -f "$pkg/setup.py" ] || continue
    "$VPY" -m pip install -q --no-deps --no-build-isolation -c constraints.txt -e "$pkg"
  done
  echo "$ewant" >"$estamp"
else
  step "twinrl command present"
fi

step "done. Check the install with: $VENV/bin/twinrl doctor"
