"""Runs of the real stack (memseries.stack) for `memseries demo` and `memseries bench soak`: run (builds, one run),
analysis (rows from samples), report (tables, CSV, PNG), cli (arguments and the whole comparison)."""
