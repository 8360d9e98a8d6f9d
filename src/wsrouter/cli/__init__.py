"""The command line: twistd options, subcommands and tools."""
