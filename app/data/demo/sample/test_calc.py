from calc import index_of, mean_of_two

assert index_of([37, 11, 18, 29, 31], 37) == 0
assert index_of([21, 37, 19, 23], 23) == 3
assert index_of([23, 19, 17, 3, 21, 37], 99) == -1
assert mean_of_two(18, 59) == 38
assert mean_of_two(19, 74) == 46
assert mean_of_two(9, 82) == 45
