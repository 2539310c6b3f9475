"""The error type for what a user can fix (a configuration or input error whose message names the fix), the
interrupt a SIGTERM raises outside training (and an interrupt raised again where Python dropped it), and the
counted nouns of messages.

Its own tiny module, imported by everything that raises it and by the command line before Hydra parses the
command, so that a mistyped override ends in one line without first importing torch, timm and Lightning.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration or input error; the message names the fix."""


class Diverged(ConfigError):
    """Training ended with a model whose validation loss is not a number (too high a learning rate, 16-bit overflow):
    a run fails with it; an auto search drops the candidate and goes on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside Lightning's loops (feature extraction, building the model; ``tlx.run.signals_as_interrupts``):
    handled as a Ctrl-C there is, but the process exits 143 (128 + SIGTERM), as it does when the signal comes during
    training."""


_noted: list[type[KeyboardInterrupt]] = []  # the interrupt a signal raised outside training, until its run is over


def note_interrupt(kind: type[KeyboardInterrupt]) -> KeyboardInterrupt:
    """The interrupt (KeyboardInterrupt for SIGINT, :class:`Terminated` for SIGTERM) for a signal handler to raise,
    noted so that :func:`raise_noted_interrupt` raises it again if it was lost. Python runs the handler wherever the
    main thread is, and inside an at-fork hook (logging's, as a DataLoader starts its workers), a finalizer or a
    weakref callback the exception is dropped ('Exception ignored in ...'): a SIGTERM or a Ctrl-C that came as feature
    extraction started its loader processes let the run go on and end with exit 0."""
    _noted[:] = [kind]
    return kind()


def raise_noted_interrupt() -> None:
    """Between steps of work outside training (each batch of feature extraction): raise the interrupt a signal
    handler raised, in case it was dropped where it landed."""
    if _noted:
        raise _noted[0]()


def interrupt_noted() -> bool:
    return bool(_noted)


def forget_interrupt() -> None:
    _noted.clear()


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name where it has none (a one-line error from a
    library's several lines)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def install_hint(package: str, extra: str) -> str:
    """How to install a missing optional ``package``, and the tlx extra that has it (in a checkout, as the README
    installs tlx; a plain ``pip install 'tlx[...]'`` would look for another project on PyPI)."""
    return f"pip install {package} (or tlx's '{extra}' extra: pip install -e '.[{extra}]' in a checkout)"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 image``, ``2 images`` (``nouns``: an irregular plural, ``entries``): a count with its noun, for messages."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
