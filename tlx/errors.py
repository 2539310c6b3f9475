"""The error type for what a user can fix: a configuration or input error whose message names the fix.

Its own tiny module, imported by everything that raises it and by the command line before Hydra parses the
command, so that a mistyped override ends in one line without first importing torch, timm and Lightning.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration or input error; the message names the fix."""
