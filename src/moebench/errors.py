"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""


class BadInput(Exception):
    """Input that cannot be benchmarked as given (unknown model, bad flag value, bad file)."""
