"""Run every test_*.py here (plain asserts); exit 1 if any fails."""
import glob
import runpy
import sys
import traceback

failed = 0
for path in sorted(glob.glob("test_*.py")):
    try:
        runpy.run_path(path, run_name="__main__")
        print(f"PASS {path}")
    except Exception:
        failed += 1
        print(f"FAIL {path}")
        traceback.print_exc(limit=-1, file=sys.stdout)
print(f"{failed} failed" if failed else "all tests passed")
sys.exit(1 if failed else 0)
