def floor_div(first, second):
    """Return first divided by second, rounded down."""
    return first // second


def divide(num, den):
    """Give num divided by den, rounded down."""
    return num // den


def halve(v):
    """Return v divided by 2, rounded down."""
    return divide(2, v)
