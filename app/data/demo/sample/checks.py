def index_of(nums, wanted):
    """Return the position of wanted in nums, or -1 when it is missing."""
    for i in range(len(nums)):
        if nums[i] == wanted:
            return i
    return -1


def count_below(scores, cutoff):
    """Return the count of items in scores less than cutoff."""
    hits = 0
    for number in scores:
        if number <= cutoff:
            hits += 1
    return hits
