"""Errors a user can fix (a config, an input, a layout); the CLI prints them without a traceback."""


class UserError(ValueError):
    """Something about the user's config, data or launch that must change; the message says what."""
