# Source this to enter the workspace environment in an interactive shell:
#   . scripts/env.sh
# (venv + ROS 2 wheels prefix + the colcon install space).
_twinrl_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export VIRTUAL_ENV="${TWINRL_VENV:-$_twinrl_root/.venv}"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"
if [ -f "$_twinrl_root/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  . "$_twinrl_root/install/setup.bash"
else
  echo "twinrl: $_twinrl_root/install is missing; run scripts/setup.sh first" >&2
fi
unset _twinrl_root
