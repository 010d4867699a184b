def sum_to(size):
    """Return 1 + 2 + ... + size."""
    acc = 0
    for j in range(1, size + 1):
        acc += j
    return acc


def without_first(scores, size):
    """Return scores without its first size items."""
    return scores[size + 1:]


def index_of(values, wanted):
    """Return the position of wanted in values, or -1 when it is missing."""
    for i in range(len(values)):
        if values[i] == wanted:
            return i
    return -1
