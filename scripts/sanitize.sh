#!/usr/bin/env bash
# The C module (enforcer/dataplane/_fastpath.c and its headers) under AddressSanitizer and UndefinedBehaviorSanitizer:
# built a second time with them, into a copy of the package in a temporary directory (the checkout's own build in
# .venv is not touched), then its unit tests and the fuzz targets run against that build. Fails on any sanitizer
# report, in any process, and on any failing test. About 2-3 minutes (HYPOTHESIS_PROFILE=ci); RELIABILITY.md has
# the figures.
#
#   scripts/sanitize.sh [PYTEST ARGS...]          e.g. -x, or -k fuzz
#   HYPOTHESIS_PROFILE=long scripts/sanitize.sh    the fuzz targets' long run, by hand (see tests/conftest.py)
#
# Needs gcc's sanitizer runtimes (libasan8, libubsan1: Debian's gcc-12 depends on them) and the test extras in .venv
# (./scripts/install.sh --test). PYTHON: the interpreter to use (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
sanitize="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
tests=(tests/unit/test_fastpath_*.py tests/unit/test_packet_callback.py tests/unit/test_keeper.py
       tests/unit/test_table.py tests/unit/test_fuzz_*.py)

libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ] || [ ! -e "$(gcc -print-file-name=libubsan.so)" ]; then
    echo "sanitize.sh: gcc has no ASan/UBSan runtime here: apt-get install gcc (Debian 12: libasan8 libubsan1)" >&2
    exit 2
fi
if [ ! -x "$python" ]; then
    echo "sanitize.sh: no $python: run ./scripts/install.sh --test first, or set PYTHON" >&2
    exit 2
fi
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")

work=$(mktemp -d "${TMPDIR:-/tmp}/p25-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# The copy: what the tests import and read. Run from there, it comes first on sys.path (before the editable
# install's finder, which Python asks last), so `enforcer` is the copy and its _fastpath the sanitized one.
mkdir "$work/src"
tar -cf - --exclude='*.so' --exclude=__pycache__ enforcer tests benchmarks policies vagrant/lab.yml vagrant/labs \
    pyproject.toml | tar -xf - -C "$work/src"
(
    cd "$work/src"
    # CFLAGS come before the project's own flags (-O2 -Wall -Wextra -Werror): a warning still fails the build
    CFLAGS="$sanitize -g" LDFLAGS="$sanitize" \
        "$python" -c 'from setuptools import setup; setup()' build_ext --inplace --build-temp "$work/obj" \
        >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; echo "sanitize.sh: the build failed" >&2; exit 1; }
)
module=$(find "$work/src/enforcer/dataplane" -maxdepth 1 -name '_fastpath*.so')
if [ -z "$module" ]; then
    echo "sanitize.sh: the build made no module (setuptools reads ext-modules from pyproject.toml from 74.1 on)" >&2
    exit 1
fi
if ! nm -D "$module" | grep -q __asan_init || ! nm -D "$module" | grep -q __ubsan_handle; then
    echo "sanitize.sh: $module was built without the sanitizers" >&2
    exit 1
fi
echo "sanitize.sh: built $(basename "$module") with $sanitize in $((SECONDS - started)) s"

# The interpreter is not instrumented: ASan's runtime must be loaded before anything else (LD_PRELOAD). Every
# Python object from malloc (PYTHONMALLOC): in pymalloc's arenas a read past a small bytes object (a packet, a
# key, an image) lands in the next object and ASan cannot see it. Leak checking off: CPython keeps memory to the
# end by design. ASan's reports go to files too, so that one from any process (a child) is found below even if
# the tests passed. UBSan stops at the first one (-fno-sanitize-recover); its log_path is not honoured next to
# ASan (gcc 12: the report is lost), so it writes to stderr, which pytest leaves alone (--capture=sys: captured at
# the file descriptor, a report would die with the process) and which is searched below.
set +e
(
    cd "$work/src"
    export LD_PRELOAD=$libasan PYTHONMALLOC=malloc
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$work/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
    "$python" -c 'import enforcer.dataplane._fastpath as f, sys; sys.exit(0 if f.__file__.startswith(sys.argv[1]) else
        "sanitize.sh: the tests would import " + f.__file__)' "$work/src/"
    "$python" -m pytest -q -p no:cacheprovider --capture=sys "${tests[@]}" "$@"
) 2>&1 | tee "$work/tests.log"
status=${PIPESTATUS[0]}
set -e

reported=0
for report in "$work"/asan.*; do
    [ -e "$report" ] || continue
    cat "$report" >&2
    reported=1
done
if [ "$reported" -eq 1 ] || grep -q -e "runtime error:" -e "ERROR: AddressSanitizer" "$work/tests.log"; then
    echo "sanitize.sh: FAILED: the sanitizers reported the errors above" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize.sh: FAILED: the tests failed under the sanitizers (exit $status)" >&2
    exit "$status"
fi
echo "sanitize.sh: no sanitizer report; $((SECONDS - started)) s in all"
