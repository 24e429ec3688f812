"""Expected, user-facing failures: caught once in the CLI and printed as one line (exit 2)."""


class AblateError(Exception):
    """Bad input or an impossible request; the message says what is wrong and what to do."""
