"""twinrl_bringup: adapters, episode manager, safety, configuration, graphs and the twinrl CLI."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = "twinrl_bringup"
ROOT = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def tree(share_sub, src_dir, pattern):
    """data_files entries that install src_dir/**/pattern under share/<pkg>/<share_sub>."""
    out = {}
    for path in glob(os.path.join(src_dir, "**", pattern), recursive=True):
        if os.path.isfile(path):
            rel = os.path.relpath(os.path.dirname(path), src_dir)
            dest = os.path.normpath(os.path.join("share", PACKAGE, share_sub, rel))
            out.setdefault(dest, []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # The workspace-level launch/ and config/ trees are installed with this package so
        # that `ros2 launch twinrl_bringup <graph>.launch.py` works from an install space.
        *tree("launch", os.path.join(ROOT, "launch"), "*.py"),
        *tree("config", os.path.join(ROOT, "config"), "*"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="TwinRL bringup: adapters, episode manager, safety, graphs and the twinrl command",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "twinrl = twinrl_bringup.cli:main",
            "ping = twinrl_bringup.nodes.link_check:ping_main",
            "pong = twinrl_bringup.nodes.link_check:pong_main",
            "episode_manager = twinrl_bringup.nodes.episode_manager:main",
            "fr3_bridge = twinrl_bringup.nodes.fr3_bridge:main",
            "intervention = twinrl_bringup.nodes.intervention:main",
            "image_adapter = twinrl_bringup.nodes.image_adapter:main",
            "sim_operator = twinrl_bringup.nodes.sim_operator:main",
            "frames = twinrl_bringup.nodes.frames:main",
        ],
        # Subcommands of `twinrl`: name = module:register, register(subparsers) adds a parser.
        "twinrl.commands": [
            "up = twinrl_bringup.runner:register",
            "graph = twinrl_bringup.graph:register",
            "doctor = twinrl_bringup.doctor:register",
            "episode = twinrl_bringup.episode_client:register",
        ],
    },
)
