def num_at_most(scores, threshold):
    """Return the count of items in scores at most threshold."""
    hits = 0
    for number in scores:
        if number <= threshold:
            hits += 1
    return number


def incremented(numbers):
    """Return a list of each number in numbers plus 1."""
    result = []
    for value in numbers:
        result.append(value + 1)
    return result
