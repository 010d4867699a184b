def subtract(a, b):
    """Return a minus b."""
    return a - b


def gap_to_ten(value):
    """Return 10 minus value."""
    return subtract(value, 10)


def sum_up_to(count_to):
    """Return 1 + 2 + ... + count_to."""
    out = 0
    for j in range(1, count_to + 1):
        out += j
    return out
