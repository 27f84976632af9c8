"""The `mmar-jax` command and its subcommands."""
