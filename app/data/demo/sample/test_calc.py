from calc import dot, factorial

assert dot([2, 4, 3, 8, 6], [7, 8, 4, 7, 7]) == 156
assert dot([3, 5, 8, 8], [1, 2, 6, 5]) == 101
assert dot([4, 6, 5, 5], [1, 6, 5, 8]) == 105
assert factorial(5) == 120
assert factorial(7) == 5040
assert factorial(4) == 24
