"""Package discovery (everything else is in pyproject.toml).

qcompile's passes and kernels live in the top-level folders passes/ and
kernels/ but import as qcompile.passes and qcompile.kernels (a top-level
"passes" package would collide with other projects in users'
environments). Every package under qcompile/, passes/ and kernels/ is found
here, so a new subpackage ships without editing a list.
"""

from setuptools import find_packages, setup

MAPPED = {"passes": "qcompile.passes", "kernels": "qcompile.kernels"}

packages = find_packages(include=["qcompile", "qcompile.*"])
package_dir = {}
for folder, name in MAPPED.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(where=folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
