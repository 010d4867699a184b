from listops import sum_to, without_first, index_of

assert sum_to(5) == 15
assert sum_to(11) == 66
assert sum_to(7) == 28
assert without_first([6, 17, 6, 15, 15, 9], 3) == [15, 15, 9]
assert without_first([12, 4, 1, 12, 19, 25, 8], 3) == [12, 19, 25, 8]
assert without_first([26, 24, 4, 18, 16, 23], 4) == [16, 23]
assert index_of([22, 21, 19, 5, 33, 16], 99) == -1
assert index_of([29, 31, 5, 25, 37], 99) == -1
assert index_of([23, 2, 19, 13], 23) == 0
