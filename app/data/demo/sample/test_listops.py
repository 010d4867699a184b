from listops import repeat, three_times, first_n

assert repeat('ab', 2) == 'abab'
assert repeat('z', 4) == 'zzzz'
assert repeat('z', 2) == 'zz'
assert three_times('ok') == 'okokok'
assert three_times('ab') == 'ababab'
assert three_times('hi') == 'hihihi'
assert first_n([2, 27, 22, 20, 21, 5], 4) == [2, 27, 22, 20]
assert first_n([25, 29, 2, 22, 21, 8], 3) == [25, 29, 2]
assert first_n([13, 23, 2, 29, 25], 2) == [13, 23]
