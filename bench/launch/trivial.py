"""The program both launchers start: one line per rank, no torch import."""
import os

print(f"hello from rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}")
