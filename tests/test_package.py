"""featx's public names: each is the function or class the README calls, never a module."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import featx


def test_no_submodule_shares_a_name_with_a_public_function():
    # `import featx.evaluate` would set featx.evaluate to the module, after which
    # `featx.evaluate(...)` fails with "'module' object is not callable".
    clashes = [name for name in featx.__all__ if importlib.util.find_spec(f"featx.{name}")]
    assert clashes == []


def test_public_names_stay_callable_after_every_submodule_is_imported():
    code = (
        "import importlib, pkgutil, types, featx\n"
        "for m in pkgutil.iter_modules(featx.__path__):\n"
        "    if m.name != 'distributed':\n"  # needs the optional ray
        "        importlib.import_module(f'featx.{m.name}')\n"
        "names = [n for n in featx.__all__ if n != '__version__']\n"
        "bad = [n for n in names if isinstance(getattr(featx, n), types.ModuleType)]\n"
        "assert bad == [], bad\n"
        "from featx.evaluation import evaluate\n"
        "from featx.reporting import report\n"
        "assert featx.evaluate is evaluate and featx.report is report\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]
