"""Installs the `lib` package so scripts import it without sys.path tricks (`pip install -e .`).

Its dependencies are requirements.txt's, less the development tools (pytest, ruff): one list of version ranges.
"""

import os

from setuptools import find_packages, setup

DEV_TOOLS = ("pytest", "ruff")


def runtime_requirements(path: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
                         ) -> list[str]:
    """The requirement lines of requirements.txt without comments and development tools."""
    with open(path) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith(DEV_TOOLS)]


setup(
    name="pixel-distillation",
    version="0.1.0",
    description="Pixel Distillation: cost-flexible distillation across image sizes and heterogeneous networks",
    packages=find_packages(include=["lib", "lib.*"]),
    python_requires=">=3.10",
    install_requires=runtime_requirements(),
)
