class SeriesError(Exception):
    """A problem the user has to fix; the CLI prints it as one line and exits 1."""
