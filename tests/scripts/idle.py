"""Worker: prints that it started, then idles outside any collective."""
import os
import time

print(f"started rank={os.environ['RANK']} pid={os.getpid()}", flush=True)
time.sleep(float(os.environ.get("IDLE_SECONDS", "120")))
