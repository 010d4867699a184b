from stats import find_index, num_above

assert find_index([28, 35, 36, 37, 21], 35) == 1
assert find_index([29, 30, 22, 13], 13) == 3
assert find_index([14, 33, 10, 29], 29) == 3
assert num_above([4, 6, 2, 9, 11, 4], 9) == 1
assert num_above([1, 11, 12, 0, 12], 9) == 3
assert num_above([3, 11, 6, 6], 3) == 3
