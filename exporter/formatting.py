"""Numbers as the terminal commands (``report``, ``plan``) print them."""

from __future__ import annotations

import math

# from here on cents are noise ($1,250 an hour, not $1,250.00)
WHOLE_DOLLARS = 100.0
# digits kept below a dime: $0.000722, $0.0000815 (never 8.15e-05), $0.00052 (no trailing zero)
SIGNIFICANT_DIGITS = 3
# smallest step shown: a ten-billionth of a dollar; anything smaller prints as $0.00
MAX_DECIMALS = 10


def dollars(value: float) -> str:
    """``value`` dollars, readable: whole dollars from $100, cents from a dime, else 3 significant digits."""
    if not math.isfinite(value):
        return f"${value}"
    sign, amount = ("-" if value < 0 else ""), abs(value)
    if amount >= WHOLE_DOLLARS:
        text = f"{amount:,.0f}"
    elif amount >= 0.1 or amount == 0:
        text = f"{amount:,.2f}"
    else:
        decimals = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(amount))
        text = f"{amount:.{min(decimals, MAX_DECIMALS)}f}".rstrip("0").rstrip(".")
        text = "0.00" if text == "0" else text  # below the smallest step shown
    return f"{sign}${text}"
