"""Packaging hook: a wheel carries the bundled data folders as ``prep/_data`` (see ``prep/resources.py``).

Everything else about the package is in ``pyproject.toml``.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# prep/resources.py names the folders; loaded from its file, since the package's dependencies are not installed yet.
_spec = importlib.util.spec_from_file_location("prep_resources", Path(__file__).parent / "prep" / "resources.py")
_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resources)


class BuildPyWithData(build_py):
    """build_py that also copies data/{seed,safety,topics,tests} into the built package."""

    def run(self) -> None:
        super().run()
        for folder in _resources.BUNDLED_FOLDERS:
            for source in sorted(Path("data", folder).glob("*")):
                if source.is_file():
                    target = Path(self.build_lib, "prep", "_data", folder, source.name)
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithData})
