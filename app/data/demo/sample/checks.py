def odds(scores):
    """Return the odd values of scores, in order."""
    acc = []
    for number in scores:
        if number % 2 == 0:
            acc.append(number)
    return acc


def dot(left, right):
    """Calculates the dot product of left and right."""
    total = 0
    for i in range(len(left)):
        total += left[i] * right[i]
    return total
