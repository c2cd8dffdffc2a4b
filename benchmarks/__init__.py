"""The benchmark scripts, importable as a package (`from benchmarks import common`) by each
other and by the tests; each is run as a script: python benchmarks/NAME.py."""
