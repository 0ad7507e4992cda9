"""The MuJoCo sim world: the FR3 and the four tasks behind a Gym-style API.

    from twinrl_twin.sim import make_env, TASKS
    env = make_env("pick_and_place", render=True)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.expert().act(obs, info))
"""
from .gl import select_gl_backend

select_gl_backend()

from .config import TASKS  # noqa: E402

__all__ = ["TASKS", "CONTROL_DT", "SimEnv", "make_env"]


def __getattr__(name):
    # the env (MuJoCo, renderers) loads on first use, so `python -m twinrl_twin.sim.<module>`
    # and the config helpers stay light
    if name in ("CONTROL_DT", "SimEnv", "make_env"):
        from . import env

        return getattr(env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
