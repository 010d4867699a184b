from checks import index_of, count_below

assert index_of([21, 2, 15, 6], 6) == 3
assert index_of([10, 23, 22, 36, 9, 34], 34) == 5
assert index_of([22, 6, 20, 8], 99) == -1
assert count_below([4, 4, 1, 11, 1, 9, 4], 4) == 2
assert count_below([1, 7, 5, 3, 4, 6], 6) == 4
assert count_below([0, 6, 8, 11, 3, 0], 8) == 4
