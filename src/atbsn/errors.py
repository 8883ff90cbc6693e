"""One exception type for problems a user can fix; the CLI prints it as one line."""


class AtbsnError(Exception):
    """A user-facing error: bad input file, wrong checkpoint, invalid option. Message names the file."""
