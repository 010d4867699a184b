from stats import only_odd, floor_div

assert only_odd([9, 14, 18, 18, 19, 25, 18]) == [9, 19, 25]
assert only_odd([20, 11, 4, 23, 15, 22]) == [11, 23, 15]
assert only_odd([11, 7, 30, 5, 27, 1, 7]) == [11, 7, 5, 27, 1, 7]
assert floor_div(37, 4) == 9
assert floor_div(33, 4) == 8
assert floor_div(21, 6) == 3
