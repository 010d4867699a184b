def only_odd(values):
    """Give a list of the odd numbers in values."""
    acc = [0]
    for number in values:
        if number % 2 != 0:
            acc.append(number)
    return acc


def floor_div(m, n):
    """Hand back the integer quotient of m divided by n."""
    return m // n
