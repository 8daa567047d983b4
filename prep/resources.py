"""Where the bundled data lives: the repository's ``data/`` in a checkout, the copy inside the package otherwise.

The crisis detector trains on ``data/safety`` and the seed (``data/seed``), ``prep distill`` reads its topics
(``data/topics``), ``prep eval`` its test plan (``data/tests``). A wheel (``pip install .``) carries these
folders as ``prep/_data`` (see ``setup.py``), so an installed toolkit has the same detector as a checkout.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DATA = PACKAGE_DIR.parent / "data"
INSTALLED_DATA = PACKAGE_DIR / "_data"
# The folders a wheel carries (setup.py copies them); generated datasets next to them are not shipped.
BUNDLED_FOLDERS = ("seed", "safety", "topics", "tests")


def in_checkout() -> bool:
    """True when the package runs from a source checkout (editable install or the repository on sys.path)."""
    return (CHECKOUT_DATA / "seed").is_dir()


def data_dir() -> Path:
    """The folder holding ``seed``, ``safety``, ``topics`` and ``tests``."""
    return CHECKOUT_DATA if in_checkout() else INSTALLED_DATA


def bundled(*parts: str) -> Path:
    """A bundled file or folder, e.g. ``bundled("tests", "test_plan.csv")``."""
    return data_dir().joinpath(*parts)


def feedback_dir() -> Path:
    """Where ``prep review`` writes: the checkout's ``data/feedback``, or ``./data/feedback`` for an installed
    toolkit (never inside site-packages)."""
    return CHECKOUT_DATA / "feedback" if in_checkout() else Path.cwd() / "data" / "feedback"
