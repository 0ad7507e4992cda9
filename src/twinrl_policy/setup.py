"""twinrl_policy (see package.xml for its scope)."""
from setuptools import find_packages, setup

PACKAGE = "twinrl_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy = twinrl_policy.nodes.policy_node:main",
        ],
        # Subcommands of `twinrl`: name = module:register.
        "twinrl.commands": [
            "train = twinrl_policy.cli:register_train",
            "eval = twinrl_policy.cli:register_eval",
        ],
    },
)
