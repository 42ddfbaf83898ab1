"""Grid intensity values and their checks: the bottom layer of the carbon processor.

The config and every provider import from here; this module imports nothing of theirs.
"""

from __future__ import annotations

import math

#: No grid emits more: a value above this is a unit mistake (kg, lbs/MWh) or bad data.
MAX_INTENSITY = 2000.0


class DataError(Exception):
    """Bad intensity data; the message names the source and the row or field."""


def check_intensity(value: object, where: str) -> float:
    """A gCO2e/kWh value as a float, or DataError naming ``where`` it came from."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataError(f"{where}: intensity {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: intensity {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: intensity {value!r} is not a finite number")
    if number < 0:
        raise DataError(f"{where}: intensity {number:g} is negative")
    if number > MAX_INTENSITY:
        raise DataError(
            f"{where}: intensity {number:g} is above {MAX_INTENSITY:g} gCO2e/kWh (wrong unit?)"
        )
    return number
