"""Process runtime: config, lifecycle, wiring of the node application."""
