#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine, as root: installs what it needs
# (scripts/setup.sh), then ruff, mypy, the import layering (lint-imports), the API reference
# (Sphinx over the docstrings, warnings as errors, into docs/_build) and pytest over tests/
# (the brokers are started by the pytest fixtures in amqscale.testing.fixtures).
# Every step runs even if an earlier one failed, so one run reports all of them; the exit
# code is non-zero if any failed, and a pytest run that collected no tests (exit code 5)
# counts as a failure. Arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
trap 'echo "test.sh: elapsed $((SECONDS - START)) s" >&2' EXIT

bash scripts/setup.sh || exit 1

failed=()
echo "test.sh: ruff check ." >&2
.venv/bin/ruff check . || failed+=(ruff)
echo "test.sh: mypy" >&2
.venv/bin/mypy || failed+=(mypy)
echo "test.sh: lint-imports (the layering contract in pyproject.toml)" >&2
.venv/bin/lint-imports || failed+=(lint-imports)
echo "test.sh: docs (the API reference from the docstrings; a warning fails it)" >&2
rm -rf docs/_build
.venv/bin/python -m sphinx -W --keep-going -n -q -b html docs docs/_build/html || failed+=(docs)
echo "test.sh: pytest" >&2
# The interop tests' results (tests/interop_plugin.py) go to build/ (not committed); the
# matrix made from them is compared with docs/interop.md, and a difference is only a note.
rm -rf build/interop
.venv/bin/python -m pytest -p no:cacheprovider tests --interop-results build/interop/results.json "$@"
rc=$?
if [ -f build/interop/results.json ]; then
  .venv/bin/python scripts/interop_matrix.py build/interop/results.json -o build/interop/interop.md &&
    { cmp -s build/interop/interop.md docs/interop.md ||
      echo "test.sh: note: docs/interop.md differs from this run's matrix (build/interop/interop.md); to update it: python scripts/interop_matrix.py build/interop/results.json" >&2; }
fi
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest ran no tests" >&2
  failed+=("pytest (no tests)")
elif [ "$rc" -ne 0 ]; then
  failed+=("pytest (exit $rc)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all passed" >&2
