def repeat(text, times):
    """Return text repeated times times."""
    return text * times


def three_times(word):
    """Return word repeated 3 times."""
    return repeat(word, 3)


def first_n(values, k):
    """Return the first k items of values."""
    return values[:k - 1]
