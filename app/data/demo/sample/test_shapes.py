from shapes import floor_div, divide, halve

assert floor_div(39, 5) == 7
assert floor_div(19, 8) == 2
assert floor_div(20, 4) == 5
assert divide(3, 2) == 1
assert divide(9, 3) == 3
assert divide(6, 2) == 3
assert halve(62) == 31
assert halve(24) == 12
assert halve(50) == 25
