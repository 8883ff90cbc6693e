"""One exception type for problems a user can fix; the CLI prints it as one line."""


class AtbsnError(ValueError):
    """A user-facing error: bad input file, wrong checkpoint, invalid option. The message names the file.

    A ``ValueError`` too, so code that catches bad values in general also catches these.
    """
