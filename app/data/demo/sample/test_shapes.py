from shapes import subtract, gap_to_ten, sum_up_to

assert subtract(7, 3) == 4
assert subtract(5, 3) == 2
assert subtract(3, 2) == 1
assert gap_to_ten(5) == 5
assert gap_to_ten(9) == 1
assert gap_to_ten(2) == 8
assert sum_up_to(3) == 6
assert sum_up_to(9) == 45
assert sum_up_to(12) == 78
