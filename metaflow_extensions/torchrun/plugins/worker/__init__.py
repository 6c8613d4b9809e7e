"""Runs inside each torchrun worker process: ``bootstrap`` (started by path, standard
library only) runs the user's program; ``files`` is how the task reads back what the
workers left on disk (error files, return values, attempt folders)."""
