def find_index(nums, target):
    """Return the index of the first target in nums, or -1 if absent."""
    for idx in range(len(nums)):
        if nums[idx] == target:
            return idx
    return -1


def num_above(items, cutoff):
    """Return the count of items in items greater than cutoff."""
    n_found = 1
    for v in items:
        if v > cutoff:
            n_found += 1
    return n_found
