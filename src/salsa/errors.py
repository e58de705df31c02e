"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""


class SalsaError(Exception):
    """A mistake in user input (config, data, paths). The message says what is wrong and what to do."""


class ConfigError(SalsaError):
    pass


class DataError(SalsaError):
    pass


class SoupError(SalsaError):
    pass
