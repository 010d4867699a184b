"""Run the tests (plain asserts); exit 1 if any fails.

    python run_tests.py              every test_*.py here
    python run_tests.py stats.py     just test_stats.py (Duet's demo passes the files it changed)
"""
import glob
import os
import runpy
import sys
import traceback

wanted = [a if os.path.basename(a).startswith("test_") else os.path.join(os.path.dirname(a), "test_" + os.path.basename(a))
          for a in sys.argv[1:]]
failed = 0
for path in sorted(set(wanted) if wanted else glob.glob("test_*.py")):
    try:
        runpy.run_path(path, run_name="__main__")
        print(f"PASS {path}")
    except Exception:
        failed += 1
        print(f"FAIL {path}")
        traceback.print_exc(limit=-1, file=sys.stdout)
print(f"{failed} failed" if failed else "all tests passed")
sys.exit(1 if failed else 0)
