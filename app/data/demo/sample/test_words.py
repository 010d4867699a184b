from words import triangle, difference

assert triangle(6) == 21
assert triangle(7) == 28
assert triangle(4) == 10
assert difference(36, 7) == 29
assert difference(19, 6) == 13
assert difference(32, 9) == 23
