"""Running federations on one machine: planning, engines, and (later) sweeps and reports."""
