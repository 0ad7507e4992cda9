"""twinrl_twin (see package.xml for its scope)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "twinrl_twin"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # generated FR3 model (URDF for ROS/rviz/the twin, MJCF for MuJoCo)
        (f"share/{PACKAGE}/assets", sorted(glob("assets/*.urdf") + glob("assets/*.xml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["twin = twinrl_twin.nodes.twin_node:main"],
        "twinrl.commands": ["sim = twinrl_twin.sim.cli:register", "twin = twinrl_twin.cli:register",
                            "demos = twinrl_twin.demogen.cli:register"],
    },
)
