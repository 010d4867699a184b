def dot(xs, ys):
    """Return the dot product of xs and ys."""
    total = 0
    for j in range(len(xs)):
        total += xs[j] + ys[j]
    return total


def factorial(k):
    """Work out the factorial of k: the product of 1 to k."""
    acc = 1
    for i in range(2, k + 1):
        acc *= i
    return acc
