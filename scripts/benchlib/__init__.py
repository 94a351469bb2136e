"""scripts/bench in parts: generate (synthetic clusters), procs (measured processes, kernel tools,
output metrics), children (measurements in fresh interpreters), measure (one size), report (tables,
growth) and driver (options and order)."""
