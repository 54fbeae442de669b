"""Phone numbers the way the Cloud API reads them: the one place that turns a ``to``, ``user_wa_id``,
``wa_id`` or display number into E.164 digits.

Meta accepts a number as an integer or as a string of digits with plus signs, hyphens, parentheses
and spaces ("Phone number formats" in the Cloud API reference): ``"+44 7700 900001"``,
``"447700900001"`` and ``447700900001`` are the same user. Digits are ASCII digits only: Python's
``str.isdigit`` also says yes to ``"²³⁴"`` and Arabic-Indic ``"٤٤٧٧"``, which no phone network
dials, so those are refused rather than read as a number.
"""

from __future__ import annotations

from typing import Any

ASCII_DIGITS = frozenset("0123456789")
SEPARATORS = frozenset("+-() ")


def phone_digits(value: Any) -> str | None:
    """The E.164 digits (no ``+``) of a phone number given as Meta accepts it, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value > 0 else None
    if not isinstance(value, str) or not value:
        return None
    digits = value.translate(_NO_SEPARATORS)     # what is left must be ASCII digits only
    return digits if digits.isascii() and digits.isdigit() else None


def ascii_digits(value: Any) -> str:
    """Every ASCII digit in ``str(value)``, in order (for lenient lookups such as a SIP user part)."""
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        text = text.translate(_NO_SEPARATORS)     # "+4479…" (most SIP user parts): digits once the + is gone
        if not (text.isascii() and text.isdigit()):
            return "".join(ch for ch in text if ch in ASCII_DIGITS)
    return text


_NO_SEPARATORS = str.maketrans("", "", "".join(SEPARATORS))
