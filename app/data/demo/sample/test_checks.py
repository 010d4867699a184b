from checks import odds, dot

assert odds([23, 8, 6, 23]) == [23, 23]
assert odds([28, 14, 7, 18, 7, 16]) == [7, 7]
assert odds([10, 25, 14, 22, 13, 5, 2]) == [25, 13, 5]
assert dot([5, 7, 5, 3], [9, 9, 6, 6]) == 156
assert dot([2, 9, 4, 7], [7, 8, 8, 2]) == 132
assert dot([9, 7, 1, 6], [1, 5, 4, 1]) == 54
