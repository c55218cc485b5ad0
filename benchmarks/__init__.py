"""Benchmarks: `python -m benchmarks.engine`, `.serve_load`, `.offline`; they need the `bench`
extra (`pip install -e '.[bench]'`)."""

import sys

# `python -m benchmarks.X` imports this package first, with sys.argv[0] still "-m": the moment
# to say which extra is missing, before X's own imports fail. Importing a module of this package
# from elsewhere (the tests) checks nothing.
if sys.argv[:1] == ["-m"]:
    from benchmarks.common import require_extra

    require_extra()
