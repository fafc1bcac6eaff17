"""The one exception type a user sees: a clear, one-line reason for refusing bad input."""


class MelFusionError(Exception):
    """Bad input or configuration. The command line prints it as one line and exits non-zero."""
