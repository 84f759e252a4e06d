"""The one exception type that the command line turns into a clear message instead of a traceback."""


class EnfError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name. The message must name the culprit."""


class NumericalError(EnfError):
    """A solve produced NaN or infinity, or the adaptive solver's step size underflowed."""
