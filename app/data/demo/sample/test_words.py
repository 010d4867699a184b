from words import num_at_most, incremented

assert num_at_most([9, 10, 5, 2], 7) == 2
assert num_at_most([1, 4, 10, 10, 10, 7], 3) == 1
assert num_at_most([10, 9, 10, 7, 12, 1, 3], 3) == 2
assert incremented([5, 11, 6, 1]) == [6, 12, 7, 2]
assert incremented([5, 9, 3, 7, 8]) == [6, 10, 4, 8, 9]
assert incremented([3, 7, 7]) == [4, 8, 8]
