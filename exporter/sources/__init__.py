"""Sources turn the outside world (NVML, inference servers) into plain typed samples."""


class SourceError(Exception):
    """A source could not be read this cycle; the message says why, in one line."""
