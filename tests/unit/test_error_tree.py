"""Every exception class svdq defines is a SvdqError, and shared/errors.py's docstring lists
every one of its classes in a family (how a caller reacts to it)."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path

import pytest

import svdq.producer
import svdq.shared
import svdq.worker
from svdq.shared import errors
from svdq.shared.errors import SvdqError

PACKAGES = (svdq.shared, svdq.producer, svdq.worker)
# Exempt from the tree: none. Celery's control flow (Retry, Reject, Ignore,
# SoftTimeLimitExceeded) is raised as Celery's own classes, never subclassed here.
EXEMPT: set[str] = set()
BUILTIN_EXCEPTIONS = {
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _modules() -> list[str]:
    return [
        info.name
        for package in PACKAGES
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    ]


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of one of our modules, by qualified name."""
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_is_a_svdq_error() -> None:
    classes = _exception_classes()
    assert "svdq.shared.errors.InvalidJobError" in classes  # the walk sees the modules
    outside = sorted(n for n, c in classes.items() if not issubclass(c, SvdqError))
    assert [n for n in outside if n not in EXEMPT] == []


def test_no_exception_class_is_defined_on_a_builtin_except_the_root() -> None:
    """Classes inside functions escape the import walk; the source shows them all."""
    offenders = []
    for package in PACKAGES:
        for path in Path(package.__path__[0]).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & BUILTIN_EXCEPTIONS and node.name != "SvdqError":
                    offenders.append(f"{path.name}:{node.lineno} {node.name}")
    assert offenders == []


def test_the_error_module_names_every_class_in_a_family() -> None:
    doc = errors.__doc__ or ""
    classes = [
        c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, BaseException)
    ]
    listed = {line.split()[0] for line in doc.splitlines() if line.startswith("    ")}
    missing = [c.__name__ for c in classes if c is not SvdqError and c.__name__ not in listed]
    assert missing == []


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidJobError("bad", field="fps"),
        errors.CallbackRefused("no", field="callback_url"),
        errors.RetryLater("later", 3.0),
        errors.LeaseBusy("j1", 4.0),
        errors.EncodeError("ffmpeg said no"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error: SvdqError) -> None:
    """Celery's result backend and the prefork pool pickle them: every attribute comes back."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert vars(back) == vars(error)
