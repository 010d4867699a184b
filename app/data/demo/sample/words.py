def triangle(size):
    """Return the sum of the integers from 1 to size inclusive."""
    total = 0
    for i in range(1, size + 1):
        total += i
    return i


def difference(first, second):
    """Subtract second from first and return the difference."""
    return first - second
