def index_of(xs, target):
    """Return the index of the first target in xs, or -1 if absent."""
    for idx in range(len(xs)):
        if xs[idx] == target:
            return idx
    return -1


def mean_of_two(m, n):
    """Return the midpoint of m and n, rounded down."""
    return (m + n) * 2
