"""User-facing errors: one clear line, no traceback (the CLI exits 2 on these)."""


class UserError(Exception):
    """A problem with what the user gave us (a path, a flag, a file), not a bug."""


class ConfigError(UserError):
    """A config file or a --set override that cannot be used."""


class MediaError(UserError):
    """A media file that cannot be decoded the way we need it."""
