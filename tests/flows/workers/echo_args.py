"""Worker: writes its rank, the world size and its arguments to $ECHO_PREFIX-<rank>.json."""
import json
import os
import sys

with open(f"{os.environ['ECHO_PREFIX']}-{os.environ['RANK']}.json", "w") as out:
    json.dump({"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
               "argv": sys.argv[1:]}, out)
