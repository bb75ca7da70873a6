"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""


class BadInput(Exception):
    """Input that cannot be benchmarked as given (unknown model, bad flag value, bad file)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line and cut to ``limit`` characters: library errors
    (CUDA, transformers, NVML) span many lines, and a reason is always printed on one."""
    return " ".join(str(exc).split())[:limit]
