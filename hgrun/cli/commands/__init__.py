"""The ``hgrun`` commands, one module per command group; each lists its commands in ``COMMANDS``."""
