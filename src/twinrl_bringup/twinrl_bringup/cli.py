"""The ``twinrl`` command.

Subcommands are plugins: each package of the stack declares them in its setup.py under the
entry-point group ``twinrl.commands`` as ``name = module:register``. ``register(subparsers)``
adds one parser and sets ``func`` (``args -> int`` exit code) with ``set_defaults``.
A plugin whose module fails to import is listed by ``twinrl --help`` with the reason,
instead of breaking every other command.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from . import workspace

GROUP = "twinrl.commands"


def _entry_points():
    """Plugins of every installed distribution, first on the path winning per name.

    A package can be installed twice (the colcon install space and the venv's editable
    install); Python's entry_points() keeps only the first copy of a distribution, which can
    be stale, so the union over all copies is taken here.
    """
    seen = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP:
                seen.setdefault(ep.name, ep)
    return [seen[k] for k in sorted(seen)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinrl",
        description="TwinRL: digital-twin-driven RL for real-world manipulation (ROS 2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    broken = []
    for ep in _entry_points():
        try:
            register = ep.load()
        except Exception as exc:  # a broken plugin must not take the CLI down
            broken.append(f"{ep.name} ({type(exc).__name__}: {exc})")
            continue
        register(sub)
    if broken:
        parser.epilog = "unavailable commands: " + "; ".join(broken)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    workspace.ensure_environment(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .config import ConfigError

        if isinstance(exc, (ConfigError, FileNotFoundError, ValueError)):
            print(f"twinrl {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
