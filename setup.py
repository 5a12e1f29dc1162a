"""The part of the build that pyproject.toml cannot say: the repository's top-level `recipes/` and
`benchmarks/` ship inside the wheel as `mmbench/_recipes` and `mmbench/_benchmarks` (package-dir
mapping, so git keeps one copy; `mmbench.paths` reads them through importlib.resources)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mmbench", "mmbench.*"]) + ["mmbench._recipes", "mmbench._benchmarks"],
    package_dir={"mmbench._recipes": "recipes", "mmbench._benchmarks": "benchmarks"},
    package_data={"mmbench._recipes": ["*/*.yaml", "*/*.md"], "mmbench._benchmarks": ["*.py"]},
    exclude_package_data={"mmbench._benchmarks": ["results/*"]},
)
