"""procfs receiver: per-process CPU time and container ids from /proc."""
