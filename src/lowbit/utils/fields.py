"""Config classes refuse unknown keywords with a :class:`~lowbit.errors.ConfigError`.

A frozen dataclass's generated ``__init__`` answers a misspelt keyword (``weight_bit=4``) or a
field of the old API (``PTQConfig(weight_bits=4)``) with a bare ``TypeError``. :func:`checked_init`
wraps it so the error names the class, the unknown keyword, the closest field and the fields
there are, plus a hint of the class's own (how the old spelling is written now).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping

from lowbit.errors import ConfigError


def checked_init(hints: Mapping[str, str] | None = None) -> Callable[[type], type]:
    """Class decorator, applied above ``@dataclass``: unknown keywords and surplus positional arguments
    raise ConfigError. ``hints`` maps an unknown keyword (e.g. an old field name) to a sentence on what
    to write instead."""

    def wrap(cls: type) -> type:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):  # noqa: N807 - replaces the dataclass's own
            unknown = [k for k in kwargs if k not in names]
            if unknown:
                k = unknown[0]
                close = difflib.get_close_matches(k, names, n=1)
                hint = (hints or {}).get(k) or (f"did you mean {close[0]!r}?" if close else "")
                raise ConfigError(f"{cls.__name__} has no field {k!r}{'; ' + hint if hint else ''} "
                                  f"(fields: {', '.join(names)})")
            if len(args) > len(names):
                raise ConfigError(f"{cls.__name__} takes at most {len(names)} positional arguments "
                                  f"({', '.join(names)}), got {len(args)}")
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls

    return wrap


__all__ = ["checked_init"]
